"""Task buffer of FTML: every example seen, kept per task, with task and minibatch sampling."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from ._checks import as_dtype, as_int, as_shape, check_batch

__all__ = ["TaskBuffer"]


class TaskBuffer:
    """All the data seen so far, per task: the buffer ``B`` of FTML (Finn et al., 2019, Alg. 1).

    FTML keeps a task-specific dataset ``D_t`` for every task of the stream (no forgetting: the
    buffer grows without bound) and, at every meta-update, samples a task ``k ~ nu^t`` uniformly
    among the tasks seen so far, then two *independent* minibatches ``D_k^tr`` and ``D_k^val``
    from ``D_k`` (Alg. 2, lines 4-5). Data arrive in batches (:meth:`add`); a task id may be new
    (it joins the buffer) or one already seen (its dataset grows).

    Storage: one growing tensor per task (capacity doubles when full, so adding ``n`` examples
    costs amortised O(n) copies), on ``device``. Task ids are arbitrary ints >= 0; they are kept
    in the order in which they first arrived.

    Sampling (:meth:`sample`): ``n`` distinct examples of the task, uniformly without
    replacement, when it holds at least ``n``; otherwise ``n`` draws with replacement (so a
    minibatch always has ``n`` rows and minibatches of several tasks can be stacked). Every draw
    uses the ``generator`` given (the learner's seeded one), so a run is reproducible.

    Args:
        example_shape: shape of one example, e.g. ``(3, 28, 28)``.
        dtype: storage dtype of the examples (labels are int64).
        device: storage device.
    """

    def __init__(self, example_shape, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.example_shape = as_shape("example_shape", example_shape)
        self.dtype = as_dtype("dtype", dtype)
        self.device = torch.device(device)
        self._x: dict[int, Tensor] = {}
        self._y: dict[int, Tensor] = {}
        self._size: dict[int, int] = {}

    # ------------------------------------------------------------------ properties
    @property
    def tasks(self) -> list[int]:
        """Task ids holding data, in order of first arrival."""
        return list(self._size)

    @property
    def num_tasks(self) -> int:
        return len(self._size)

    def size(self, task: int) -> int:
        """``|D_task|``: examples stored for ``task`` (0 for a task never seen)."""
        return self._size.get(as_int("task", task, low=0), 0)

    def __len__(self) -> int:
        return sum(self._size.values())

    def __contains__(self, task: int) -> bool:
        return task in self._size

    def __repr__(self) -> str:
        return (f"TaskBuffer(example_shape={self.example_shape}, dtype={self.dtype}, device={self.device}, "
                f"tasks={self.num_tasks}, examples={len(self)})")

    # ------------------------------------------------------------------ insert / read
    def add(self, x: Tensor, y: Tensor, task: int) -> None:
        """Append a batch to ``D_task`` (Alg. 1, line 8).

        Args:
            x: ``[B, *example_shape]`` examples of the buffer's dtype and device (a copy is kept).
            y: ``[B]`` int64 labels.
            task: task id (int >= 0); a new id joins the buffer.
        """
        b = check_batch(x, y, self.example_shape, self.dtype, self.device)
        task = as_int("task", task, low=0)
        if b == 0:
            return
        n = self._size.get(task, 0)
        if task not in self._x or n + b > self._x[task].shape[0]:
            cap = max(n + b, 2 * (self._x[task].shape[0] if task in self._x else 0), 16)
            xs = torch.empty((cap,) + self.example_shape, dtype=self.dtype, device=self.device)
            ys = torch.empty(cap, dtype=torch.int64, device=self.device)
            if n:
                xs[:n] = self._x[task][:n]
                ys[:n] = self._y[task][:n]
            self._x[task], self._y[task] = xs, ys
        self._x[task][n : n + b] = x.detach()
        self._y[task][n : n + b] = y
        self._size[task] = n + b

    def _check_task(self, task) -> int:
        task = as_int("task", task, low=0)
        if task not in self._size:
            held = self.tasks
            raise ValueError(f"task {task} holds no data; the buffer holds tasks {held}" if held
                             else f"task {task} holds no data: the buffer is empty")
        return task

    def data(self, task: int) -> tuple[Tensor, Tensor]:
        """All of ``D_task``: ``([n, *example_shape], [n])`` views (do not write into them)."""
        task = self._check_task(task)
        n = self._size[task]
        return self._x[task][:n], self._y[task][:n]

    # ------------------------------------------------------------------ sampling
    def sample_tasks(self, n: int, generator: Optional[torch.Generator] = None,
                     exclude: Optional[int] = None) -> list[int]:
        """``n`` task ids drawn uniformly, with replacement, among the tasks held (``nu^t``, Sec. 5).

        Args:
            n: number of draws (>= 1).
            generator: CPU torch.Generator (None: the global one).
            exclude: a task id left out of the draw (FTL trains on the tasks before the current one).
        """
        n = as_int("n", n, low=1)
        pool = [t for t in self._size if t != exclude]
        if not pool:
            raise ValueError("cannot sample a task: the buffer is empty" if not self._size
                             else f"cannot sample a task: the buffer holds only task {exclude}, which is excluded")
        idx = torch.randint(len(pool), (n,), generator=generator)
        return [pool[i] for i in idx.tolist()]

    def sample(self, task: int, n: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """A minibatch of ``n`` examples of ``D_task``, uniform (see the class docstring).

        Two calls give independent minibatches (``D^tr`` and ``D^val`` of Alg. 2, line 5).

        Returns:
            ``(x, y)``: ``[n, *example_shape]`` and ``[n]`` int64 (copies).
        """
        task = self._check_task(task)
        n = as_int("n", n, low=1)
        size = self._size[task]
        if size >= n:
            idx = torch.randperm(size, generator=generator)[:n]
        else:
            idx = torch.randint(size, (n,), generator=generator)
        idx = idx.to(self.device)
        return self._x[task][idx], self._y[task][idx]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: a copy of each task's data, in arrival order."""
        return {
            "example_shape": self.example_shape,
            "dtype": self.dtype,
            "tasks": self.tasks,
            "x": [self._x[t][: self._size[t]].clone() for t in self._size],
            "y": [self._y[t][: self._size[t]].clone() for t in self._size],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (checked in full before anything changes)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (a TaskBuffer.state_dict()), got {type(state).__name__}")
        missing = [k for k in ("example_shape", "dtype", "tasks", "x", "y") if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; expected a TaskBuffer.state_dict()")
        if tuple(state["example_shape"]) != self.example_shape or state["dtype"] != self.dtype:
            raise ValueError(f"state holds {state['dtype']} examples of shape {tuple(state['example_shape'])}; "
                             f"this buffer stores {self.dtype} {self.example_shape}")
        tasks, xs, ys = list(state["tasks"]), list(state["x"]), list(state["y"])
        if not (len(tasks) == len(xs) == len(ys)) or len(set(tasks)) != len(tasks):
            raise ValueError("state['tasks'], state['x'] and state['y'] must have one entry per distinct task")
        for t, x, y in zip(tasks, xs, ys):
            as_int("state['tasks'] entry", t, low=0)
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise ValueError(f"state of task {t}: x and y must be tensors")
            check_batch(x.to(self.device), y.to(self.device), self.example_shape, self.dtype, self.device)
        self._x, self._y, self._size = {}, {}, {}
        for t, x, y in zip(tasks, xs, ys):
            self._x[int(t)] = x.to(self.device).clone()
            self._y[int(t)] = y.to(self.device).clone()
            self._size[int(t)] = x.shape[0]
