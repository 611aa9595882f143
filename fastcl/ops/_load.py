"""Loads the compiled extension ``fastcl._C`` and says what runs.

If the extension cannot be imported, fastcl still works on the pure-PyTorch references and
warns once; with ``FASTCL_REQUIRE_EXT=1`` (CI sets it) a missing extension is an error, so a
broken build can never hide behind the fallback.

The CPU kernels run with the widest vector ISA the CPU supports; ``FASTCL_ISA=avx512|avx2|generic``
(or ``set_cpu_isa``) forces one, and an unknown or unsupported name fails the import with a
ValueError naming it and the ISAs this CPU runs (docs/portability.md).
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


#: The ISA names ``set_cpu_isa`` takes ("auto": the widest this CPU runs).
CPU_ISAS = ("auto", "avx512", "avx2", "generic")

#: The ISA forced by ``FASTCL_ISA`` or ``set_cpu_isa`` (None: the automatic choice).
_FORCED_ISA: str | None = None


def supported_cpu_isas() -> list[str]:
    """The vector ISAs the CPU kernels can run with on this machine, widest first.

    Each is a variant of the CPU loops compiled for that instruction set ("avx512":
    x86-64-v4, "avx2": x86-64-v3, "generic": baseline x86-64) that this CPU runs; builds other
    than GCC on x86-64 hold "generic" alone. Empty without the extension.
    """
    return [str(n) for n in torch.ops.fastcl.supported_cpu_isas()] if HAVE_EXT else []


def set_cpu_isa(name: str) -> None:
    """Run the CPU kernels with the loops compiled for one vector ISA, from now on.

    Args:
        name: "avx512", "avx2", "generic", or "auto" (the widest this CPU runs, the default
            when fastcl loads). ``FASTCL_ISA=name`` in the environment does the same at import.

    Raises ValueError, naming ``name`` and the ISAs this CPU runs, when ``name`` is unknown or
    not supported here (the ISA in use is then unchanged), and RuntimeError without the
    extension. Meant for tests and benchmarks: results may differ in the last bits between
    ISAs (vector width, FMA contraction), never by more than rounding.
    """
    _set_isa(name, "name")


def _set_isa(name, what: str) -> None:
    global _FORCED_ISA
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str (one of {', '.join(CPU_ISAS)}), got {type(name).__name__}")
    if not HAVE_EXT:
        raise RuntimeError(f"{what}={name!r}: choosing the CPU ISA needs the compiled extension "
                           "fastcl._C, which did not load")
    supported = supported_cpu_isas()
    if name not in CPU_ISAS:
        raise ValueError(f"{what}={name!r} is not an ISA: expected one of {', '.join(CPU_ISAS)} "
                         f"(this CPU runs {', '.join(supported)})")
    if name != "auto" and name not in supported:
        raise ValueError(f"{what}={name!r} is not supported by this CPU (or build), which runs only "
                         f"{', '.join(supported)}; use one of those or auto (the widest)")
    torch.ops.fastcl.set_cpu_isa(name)
    _FORCED_ISA = None if name == "auto" else name


def cpu_isa_forced() -> bool:
    """True when the ISA in use was forced (FASTCL_ISA or set_cpu_isa), not chosen automatically."""
    return _FORCED_ISA is not None


def _apply_isa_env() -> None:
    """Applies FASTCL_ISA at import (unset, empty or "auto": the widest the CPU runs)."""
    name = os.environ.get("FASTCL_ISA", "").strip()
    if name in ("", "auto"):
        return
    if not HAVE_EXT:
        warnings.warn(f"fastcl: FASTCL_ISA={name} has no effect: the extension fastcl._C did not load",
                      RuntimeWarning, stacklevel=3)
        return
    _set_isa(name, "FASTCL_ISA")


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


_apply_isa_env()
