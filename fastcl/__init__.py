"""fastcl: fast continual learning and meta-learning for PyTorch.

The hot paths (proximal updates, Taylor importance, episodic-memory ring buffers, trajectory
shifts) are fused C++/CUDA custom operators in :mod:`fastcl.ops`, each with a pure-PyTorch
reference in :mod:`fastcl.ops.reference`. Episodic memories live in :mod:`fastcl.memory`.
"""

from ._version import __version__
from . import ops, optim
from ._warnings import SlowPathWarning
from .ops import backend

__all__ = ["__version__", "ops", "optim", "backend", "SlowPathWarning", "run_stream"]


def __getattr__(name: str):
    """``fastcl.run_stream`` (:func:`fastcl.train.run_stream`), imported on first use so that
    ``import fastcl`` stays light."""
    if name == "run_stream":
        from .train import run_stream
        return run_stream
    raise AttributeError(f"module 'fastcl' has no attribute {name!r}")
