"""Task families of the CTS experiments (Shin et al. 2021): the synthetic 2D family of Sec. 4.1
and a heterogeneous image family built from the offline datasets.

Both give what :class:`fastcl.algorithms.cts.TaskLearners` needs: a per-task ``loss(params,
batch)`` and a pure ``batch_fn(m, k, tasks)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optim.functional import inner_step_
from . import sources

__all__ = ["Synthetic2D", "synthetic2d", "SYNTHETIC_FORMS", "C0", "C2", "ROUNDED_COEFFS", "AUTHORS_ANGLES", "ImageTasks", "image_tasks",
           "IMAGE_TASKS", "SmallConvNet", "adapt_points"]

#: coefficients (c0, c2) of the authors' scaled Himmelblau: ``coeff[0]``, ``coeff[2]`` of
#: ``synthetic/env.npz`` in the authors' repository (JWoong148/ContinualTrajectoryShifting), drawn
#: once by ``np.random.rand`` in their ``set_env.py``. The rounded 0.738 / 0.995 of earlier fastcl
#: versions change the landscape enough that Reptile diverges from (-5, -5); pass
#: ``coeffs=ROUNDED_COEFFS`` to get them back.
C0, C2 = 0.7384512135082113, 0.9954126045755818
ROUNDED_COEFFS = (0.738, 0.995)
#: the eight task rotations of the authors' ``synthetic/env.npz`` (``angles``), for
#: ``synthetic2d(8, angles=AUTHORS_ANGLES)`` (``--cts-angles authors``)
AUTHORS_ANGLES = (0.9192431493036517, 1.115065426203848, 4.415228705528784, 5.9905628979208485,
                  3.9030251182851323, 4.017727223291247, 3.1372847487749387, 0.28030319393389896)
#: ``"scaled"``: the authors' code (default); ``"printed"``: the formula as printed in Sec. 4.1
SYNTHETIC_FORMS = ("scaled", "printed")


def _rotate(x: Tensor, angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]], -1)


def synthetic2d_loss(x: Tensor, angle: Tensor, target: Tensor, form: str = "scaled",
                     coeffs: tuple[float, float] = (C0, C2)) -> Tensor:
    """The task loss at points ``x`` ``[..., 2]`` for a task (``angle``, ``target`` ``[2]``,
    broadcastable).

    ``"scaled"`` (authors' code, ``synthetic/loss.py``): ``u = R(angle)(x - target)/3``,
    ``f = c0 (u0^2 + u1 - 11)^2 + c2 (u0 + u1^2 - 7)^2``, ``(c0, c2) = coeffs`` (default the
    authors' 0.7384512..., 0.9954126...; :data:`C0`, :data:`C2`).
    ``"printed"`` (Sec. 4.1): the template ``{(a^2 - 10a + b + 9)^2 + (a + b^2 - 10b + 13)^2}/3``
    (a Himmelblau centred at (5, 5)) moved to the target and rotated about it,
    ``(a, b) = R(angle)(x - target) + (5, 5)``.
    """
    if form == "scaled":
        c0, c2 = coeffs
        u = _rotate(x - target, angle) / 3
        return c0 * (u[..., 0] ** 2 + u[..., 1] - 11) ** 2 + c2 * (u[..., 0] + u[..., 1] ** 2 - 7) ** 2
    if form == "printed":
        u = _rotate(x - target, angle) + 5
        a, b = u[..., 0], u[..., 1]
        return ((a * a - 10 * a + b + 9) ** 2 + (a + b * b - 10 * b + 13) ** 2) / 3
    raise ValueError(f"form must be one of {', '.join(SYNTHETIC_FORMS)}, got {form!r}")


@dataclass
class Synthetic2D:
    """The synthetic 2D task family of CTS Sec. 4.1: ``T`` rotated copies of a four-minima
    template at ``targets`` on a circle around (5, 5).

    Attributes:
        angles: ``[T]`` rotation of each task (uniform in [0, 2 pi), from the seed).
        targets: ``[T, 2]``, ``7 (sin 2 pi t/T, cos 2 pi t/T) + (5, 5)``.
        form: ``"scaled"`` or ``"printed"`` (see :func:`synthetic2d_loss`).
        coeffs: (c0, c2) of the scaled form (unused by ``"printed"``).
    """

    angles: Tensor
    targets: Tensor
    form: str = "scaled"
    coeffs: tuple[float, float] = (C0, C2)

    def __len__(self) -> int:
        return self.angles.shape[0]

    def loss(self, params: dict[str, Tensor], batch) -> Tensor:
        """One task's loss at ``params["x"]`` ``[2]``; ``batch`` = (angle, target)."""
        angle, target = batch
        return synthetic2d_loss(params["x"], angle, target, self.form, self.coeffs)

    def batch_fn(self, m: int, k: int, tasks: Tensor):
        """The (deterministic) batch of tasks ``tasks``: their angles and targets."""
        return self.angles[tasks], self.targets[tasks]

    def task_losses(self, x: Tensor) -> Tensor:
        """``[..., T]`` losses of every task at points ``x`` ``[..., 2]``."""
        return synthetic2d_loss(x.unsqueeze(-2), self.angles, self.targets, self.form, self.coeffs)


def synthetic2d(num_tasks: int = 8, seed: int = 0, form: str = "scaled", dtype=torch.float64,
                coeffs: tuple[float, float] = (C0, C2), angles: Optional[Sequence[float]] = None) -> Synthetic2D:
    """The family of Sec. 4.1 with ``num_tasks`` targets and random rotations drawn from ``seed``
    (or the given ``angles``, e.g. :data:`AUTHORS_ANGLES`; ``seed`` is then unused);
    ``coeffs``: (c0, c2) of the scaled form (default the authors' exact values)."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
    if form not in SYNTHETIC_FORMS:
        raise ValueError(f"form must be one of {', '.join(SYNTHETIC_FORMS)}, got {form!r}")
    try:
        coeffs = tuple(float(c) for c in coeffs)
    except (TypeError, ValueError):
        coeffs = None
    if coeffs is None or len(coeffs) != 2 or not all(math.isfinite(c) and c > 0 for c in coeffs):
        raise ValueError(f"coeffs must be two finite numbers > 0 (c0, c2), got {coeffs!r}")
    if angles is None:
        g = torch.Generator().manual_seed(int(seed))
        angles = (torch.rand(num_tasks, generator=g, dtype=torch.float64) * 2 * math.pi).to(dtype)
    else:
        angles = torch.as_tensor(angles, dtype=torch.float64).flatten()
        if angles.shape != (num_tasks,) or not bool(torch.isfinite(angles).all()):
            raise ValueError(f"angles must be {num_tasks} finite numbers (one per task), got {tuple(angles.shape)}")
        angles = angles.to(dtype)
    t = torch.arange(num_tasks, dtype=torch.float64) * 2 * math.pi / num_tasks
    targets = (7 * torch.stack([torch.sin(t), torch.cos(t)], -1) + 5).to(dtype)
    return Synthetic2D(angles, targets, form, coeffs)


def adapt_points(family: Synthetic2D, x0: Tensor, steps: int, optimizer: str = "adam", lr: float = 0.05,
                 momentum: float = 0.9) -> Tensor:
    """Task-average loss after ``steps`` inner steps of every task from each start point.

    The meta-test of Sec. 4.1 (and the background of Fig. 5): ``x0`` ``[N, 2]`` start points;
    every task adapts from each independently (stacked, one autograd call per step).
    Returns ``[N]`` mean over tasks of the final loss.
    """
    x = x0.detach().unsqueeze(1).repeat(1, len(family), 1).clone()  # [N, T, 2]
    state: dict[str, Any] = {}
    for _ in range(steps):
        x.requires_grad_(True)
        loss = family.task_losses(x).diagonal(dim1=-2, dim2=-1).sum()
        (g,) = torch.autograd.grad(loss, [x])
        x = x.detach()
        inner_step_([x], [g], state, optimizer, lr, momentum=momentum)
    with torch.no_grad():
        return family.task_losses(x).diagonal(dim1=-2, dim2=-1).mean(-1)


# ------------------------------------------------------------------------------ images
class SmallConvNet(nn.Module):
    """A small ReLU convnet for 28x28 grey images (no batch norm, so it runs under vmap as a
    pure function): two stride-2 3x3 convs, one hidden layer, a ``head``."""

    def __init__(self, num_classes: int = 10, width: int = 16, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width * 7 * 7, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.fc(x.flatten(-3)))
        return self.head(x)


def _variant(x: Tensor, kind: str) -> Tensor:
    if kind == "plain":
        return x
    if kind == "rot90":
        return torch.rot90(x, 1, (-2, -1))
    if kind == "inverted":
        return 1 - x
    raise ValueError(kind)


#: name -> (source, variant). Each is a 10-way task with its own head.
IMAGE_TASKS = {
    "mnist": ("mnist", "plain"), "mnist-rot90": ("mnist", "rot90"), "mnist-inverted": ("mnist", "inverted"),
    "fashion": ("fashion-mnist", "plain"), "fashion-rot90": ("fashion-mnist", "rot90"),
    "fashion-inverted": ("fashion-mnist", "inverted"),
}


@dataclass
class ImageTasks:
    """Image classification tasks with their own heads, stacked for the task learners.

    Attributes:
        names: the task names.
        x_train: per task ``[N, 1, 28, 28]`` float images in [0, 1]; ``y_train`` labels ``[N]``.
        x_test, y_test: the same for the test split.
        batch_size: examples per inner step.
        seed: seed of the batch sampling.
    """

    names: list[str]
    x_train: list[Tensor]
    y_train: list[Tensor]
    x_test: list[Tensor]
    y_test: list[Tensor]
    batch_size: int = 32
    seed: int = 0
    model: SmallConvNet = field(default_factory=SmallConvNet)

    def __len__(self) -> int:
        return len(self.names)

    def loss(self, params: dict[str, Tensor], batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(torch.func.functional_call(self.model, params, (x,), tie_weights=False), y)

    def batch_fn(self, m: int, k: int, tasks: Tensor):
        """Batches ``([T, B, 1, 28, 28], [T, B])``: task t's examples of step (m, k), a pure
        function of (seed, m, k, t)."""
        xs, ys = [], []
        for t in tasks.tolist():
            g = torch.Generator().manual_seed(hash((self.seed, int(m), int(k), int(t))) % (2 ** 62))
            idx = torch.randint(len(self.y_train[t]), (self.batch_size,), generator=g)
            xs.append(self.x_train[t][idx])
            ys.append(self.y_train[t][idx])
        return torch.stack(xs), torch.stack(ys)


def _load(source: str, data: Optional[str]):
    if source == "mnist":
        return sources.load_mnist(data)
    return sources.load_mnist("fashion-mnist")


def image_tasks(names: Sequence[str], per_task: int = 2000, test_per_task: int = 1000, batch_size: int = 32,
                seed: int = 0, data: Optional[str] = None) -> ImageTasks:
    """The tasks ``names`` (keys of :data:`IMAGE_TASKS`), ``per_task`` training images each
    (drawn with ``seed``); ``data``: the MNIST source (see :func:`fastcl.data.sources.load_mnist`).
    Fashion-MNIST tasks need its IDX files (``sources.FASHION_MNIST_DIRS``)."""
    g = torch.Generator().manual_seed(int(seed))
    xs, ys, xts, yts = [], [], [], []
    for name in names:
        if name not in IMAGE_TASKS:
            raise ValueError(f"unknown image task {name!r}; choose from {', '.join(IMAGE_TASKS)}")
        src, kind = IMAGE_TASKS[name]
        train, test = _load(src, data)
        for s, n, xo, yo in ((train, per_task, xs, ys), (test, test_per_task, xts, yts)):
            idx = torch.randperm(len(s), generator=g)[:n]
            xo.append(_variant(s.x[idx].float() / 255.0, kind))
            yo.append(s.y[idx].clone())
    return ImageTasks(list(names), xs, ys, xts, yts, batch_size, seed)
