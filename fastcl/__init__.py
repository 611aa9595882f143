"""fastcl: fast continual learning and meta-learning for PyTorch.

The hot paths (proximal updates, Taylor importance, episodic-memory ring buffers, trajectory
shifts) are fused C++/CUDA custom operators in :mod:`fastcl.ops`, each with a pure-PyTorch
reference in :mod:`fastcl.ops.reference`. Episodic memories live in :mod:`fastcl.memory`.
"""

from ._version import __version__
from . import ops, optim
from .ops import backend

__all__ = ["__version__", "ops", "optim", "backend"]
