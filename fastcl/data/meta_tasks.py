"""Task families of the meta-learners: sinusoid regression and the quadratic example of FTML.

* :class:`SinusoidFamily`: ``y = A sin(w x + b)`` with ``x`` uniform on ``[-5, 5]`` (MAML
  Sec. 5.1; L2F supplementary Sec. C.1). :data:`SINUSOID_FAMILIES` holds L2F's standard family
  (``sinusoid``: A in [0.1, 5], w in [0.8, 1.2], b in [0, pi], the same ranges at training and
  evaluation), the MAML paper's (``sinusoid-maml``: the same with w = 1) and
  the non-overlapping variant of the L2F supplementary (``sinusoid-disjoint``: train A in
  [0.1, 3], w in [0.8, 1.0], b in [0, pi/2]; evaluate A in [3, 5], w in [1.0, 1.2],
  b in [pi/2, pi]).
* :func:`quadratic_tasks` with :func:`joint_optimum` and :func:`maml_optimum`: FTML appendix A,
  linear regression on fixed features whose joint-training and one-step MAML optima have closed
  forms.

Every sampler takes a ``torch.Generator`` and returns a :class:`TaskBatch`: tensors stacked
over the tasks of a meta-batch, ``[B, K, *input_shape]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["TaskBatch", "SinusoidRanges", "SinusoidFamily", "SINUSOID_FAMILIES", "make_sinusoid_family",
           "quadratic_tasks", "quadratic_moments", "joint_optimum", "maml_optimum"]


class TaskBatch(NamedTuple):
    """A meta-batch of ``B`` tasks: support (D, adaptation) and query (D', meta-loss) sets.

    Attributes:
        support_x: ``[B, K, *input_shape]``.
        support_y: ``[B, K, *target_shape]``.
        query_x: ``[B, Q, *input_shape]``.
        query_y: ``[B, Q, *target_shape]``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])


@dataclass(frozen=True)
class SinusoidRanges:
    """Uniform ranges of the amplitude A, frequency w and phase b of ``y = A sin(w x + b)``."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    frequency: tuple[float, float] = (0.8, 1.2)
    phase: tuple[float, float] = (0.0, math.pi)

    def __post_init__(self):
        for name in ("amplitude", "frequency", "phase"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} range must have low <= high, got ({lo}, {hi})")


@dataclass(frozen=True)
class SinusoidFamily:
    """Sinusoid regression tasks (inputs ``[*, 1]``, targets ``[*, 1]``).

    Attributes:
        train: ranges of the meta-training tasks.
        test: ranges of the evaluation tasks (the same as ``train`` in the standard family).
        x_range: input interval, ``[-5, 5]``.
    """

    train: SinusoidRanges = SinusoidRanges()
    test: SinusoidRanges = SinusoidRanges()
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_curves(self, n: int, split: str, generator: Optional[torch.Generator] = None) -> Tensor:
        """``[n, 3]`` (A, w, b) drawn from the ``split`` ("train" or "test") ranges."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        r = self.train if split == "train" else self.test
        u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
        lo = torch.tensor([r.amplitude[0], r.frequency[0], r.phase[0]], dtype=torch.float64)
        hi = torch.tensor([r.amplitude[1], r.frequency[1], r.phase[1]], dtype=torch.float64)
        return lo + u * (hi - lo)

    def sample_x(self, n: int, k: int, generator: Optional[torch.Generator] = None) -> Tensor:
        lo, hi = self.x_range
        return lo + (hi - lo) * torch.rand(n, k, 1, generator=generator, dtype=torch.float64)

    @staticmethod
    def evaluate(curves: Tensor, x: Tensor) -> Tensor:
        """``A sin(w x + b)`` for ``curves`` ``[n, 3]`` and ``x`` ``[n, k, 1]``."""
        a, w, b = (curves[:, i].view(-1, 1, 1) for i in range(3))
        return a * torch.sin(w * x + b)

    def sample(self, num_tasks: int, shots: int, queries: int, split: str = "train",
               generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               return_curves: bool = False):
        """A :class:`TaskBatch` of ``num_tasks`` curves, ``shots`` support and ``queries`` query
        points each (independent uniform x); with ``return_curves`` also the ``[B, 3]`` curves."""
        for name, v in (("num_tasks", num_tasks), ("shots", shots), ("queries", queries)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        curves = self.sample_curves(num_tasks, split, generator)
        xs = self.sample_x(num_tasks, shots, generator)
        xq = self.sample_x(num_tasks, queries, generator)
        batch = TaskBatch(xs.to(dtype), self.evaluate(curves, xs).to(dtype), xq.to(dtype),
                          self.evaluate(curves, xq).to(dtype))
        return (batch, curves) if return_curves else batch


#: name -> the family (``fastcl run maml --family NAME``).
SINUSOID_FAMILIES: dict[str, SinusoidFamily] = {
    "sinusoid": SinusoidFamily(),
    # MAML Sec. 5.1: "the amplitude varies within [0.1, 5.0] and the phase varies within [0, pi]",
    # the frequency fixed at 1
    "sinusoid-maml": SinusoidFamily(train=SinusoidRanges(frequency=(1.0, 1.0)),
                                    test=SinusoidRanges(frequency=(1.0, 1.0))),
    "sinusoid-disjoint": SinusoidFamily(
        train=SinusoidRanges((0.1, 3.0), (0.8, 1.0), (0.0, math.pi / 2)),
        test=SinusoidRanges((3.0, 5.0), (1.0, 1.2), (math.pi / 2, math.pi)),
    ),
}


def make_sinusoid_family(name: str) -> SinusoidFamily:
    if name not in SINUSOID_FAMILIES:
        raise ValueError(f"unknown task family {name!r}; choose from {', '.join(SINUSOID_FAMILIES)}")
    return SINUSOID_FAMILIES[name]


# ------------------------------------------------------------------------------ FTML appendix A
def quadratic_tasks(num_tasks: int = 4, dim: int = 3, points: int = 16, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> TaskBatch:
    """Linear-regression tasks of FTML appendix A: support = query = the task's whole dataset.

    Task i has inputs ``x = s_i * z`` with ``z ~ N(0, I)`` and a per-task scale ``s_i`` (so the
    second moments ``A_i`` differ and the joint and MAML optima differ), a constant 1 as the last
    feature (the offset), and ``y = x^T w_i`` for a random ``w_i``. With the MSE loss of a
    bias-free ``nn.Linear(dim, 1)``, task i's loss is the quadratic
    ``f_i(w) = 1/2 w^T A_i w + w^T b_i + c_i`` of :func:`quadratic_moments`.
    """
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 1.5, num_tasks, dtype=torch.float64)
    z = torch.randn(num_tasks, points, dim - 1, generator=g, dtype=torch.float64)
    x = torch.cat([z * scales.view(-1, 1, 1), torch.ones(num_tasks, points, 1, dtype=torch.float64)], dim=2)
    w = torch.randn(num_tasks, dim, 1, generator=g, dtype=torch.float64)
    y = x @ w
    x, y = x.to(dtype), y.to(dtype)
    return TaskBatch(x, y, x, y)


def quadratic_moments(tasks: TaskBatch) -> tuple[Tensor, Tensor]:
    """``A_i`` ``[M, d, d]`` and ``b_i`` ``[M, d]`` with ``mean_n (w^T x - y)^2 = 1/2 w^T A_i w + w^T b_i + c``:
    ``A_i = 2 E[x x^T]``, ``b_i = -2 E[x y]`` (the MSE has no factor 1/2, so the moments carry a 2)."""
    x, y = tasks.support_x.double(), tasks.support_y.double()
    n = x.shape[1]
    a = 2.0 * x.transpose(1, 2) @ x / n
    b = -2.0 * (x.transpose(1, 2) @ y).squeeze(-1) / n
    return a, b


def joint_optimum(tasks: TaskBatch) -> Tensor:
    """``w*_joint = -Abar^{-1} bbar`` (FTML Eq. 6)."""
    a, b = quadratic_moments(tasks)
    return -torch.linalg.solve(a.mean(0), b.mean(0))


def maml_optimum(tasks: TaskBatch, alpha: float) -> Tensor:
    """``w*_MAML = -A_dagger^{-1} b_dagger`` for one inner step of size ``alpha`` (FTML Eq. 7):
    ``A_dagger = mean_i (I - alpha A_i)^2 A_i``, ``b_dagger = mean_i (I - alpha A_i)^2 b_i``."""
    a, b = quadratic_moments(tasks)
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    m2 = (eye - alpha * a) @ (eye - alpha * a)
    a_dag = (m2 @ a).mean(0)
    b_dag = (m2 @ b.unsqueeze(-1)).squeeze(-1).mean(0)
    return -torch.linalg.solve(a_dag, b_dag)
