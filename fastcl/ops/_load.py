"""Loads the compiled extension ``fastcl._C`` and says what runs.

If the extension cannot be imported, fastcl still works on the pure-PyTorch references and
warns once; with ``FASTCL_REQUIRE_EXT=1`` (CI sets it) a missing extension is an error, so a
broken build can never hide behind the fallback.
"""

from __future__ import annotations

import os
import warnings

import torch

_LOAD_ERROR: BaseException | None = None

try:
    from fastcl import _C  # noqa: F401  (registers torch.ops.fastcl.*)

    HAVE_EXT = True
except ImportError as e:  # pragma: no cover - exercised only on a broken build
    HAVE_EXT = False
    _LOAD_ERROR = e
    if os.environ.get("FASTCL_REQUIRE_EXT", "") not in ("", "0"):
        raise ImportError(
            "FASTCL_REQUIRE_EXT is set but the compiled extension fastcl._C did not load: "
            f"{e}. Build it with `pip install -e . --no-build-isolation` (or `make test`)."
        ) from e
    warnings.warn(
        f"fastcl: the compiled extension fastcl._C did not load ({e}); running on the "
        "pure-PyTorch references (slow). Set FASTCL_REQUIRE_EXT=1 to make this an error.",
        RuntimeWarning,
        stacklevel=2,
    )


def cuda_built() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return HAVE_EXT and bool(torch.ops.fastcl.cuda_built())


def cpu_isa() -> str:
    """The vector ISA the CPU kernels run with ("avx512", "avx2", "generic"), or "none"."""
    return str(torch.ops.fastcl.cpu_isa()) if HAVE_EXT else "none"


def backend() -> str:
    """What the fused ops run on: ``"cuda"``, ``"cpu"`` or ``"reference"``.

    ``"cuda"`` when the CUDA kernels were built and a GPU is available; ``"cpu"`` when the
    extension loaded; ``"reference"`` when fastcl fell back to the pure-PyTorch references.
    """
    if not HAVE_EXT:
        return "reference"
    if cuda_built() and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def load_error() -> BaseException | None:
    """The ImportError that made fastcl fall back to the references, if any."""
    return _LOAD_ERROR
