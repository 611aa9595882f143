"""Ring-buffer episodic memory: the last ``m`` examples of every class of every task."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor

from .. import ops
from ._checks import as_dtype, as_int, as_shape, as_task_list, check_batch

__all__ = ["RingBuffer"]


class RingBuffer:
    """Episodic memory of the last ``per_class`` examples per class per task (HAL / ER-Ring).

    The memory of HAL (Chaudhry et al., "Using Hindsight to Anchor Past Knowledge in Continual
    Learning", Sec. 2 and Algorithm 1: "update M by adding B in a FIFO ring buffer") and of its
    ER-Ring baseline. Every (task, class) pair owns a FIFO ring of ``m = per_class`` rows of one
    preallocated tensor: a ring fills from its first row, then overwrites its oldest example.
    Inserting a batch equals inserting its examples one by one (two examples of one class take
    consecutive slots; with more than ``m`` of one class in a batch, the last ``m`` stay).

    Storage: ``data`` ``[num_tasks*num_classes*m, *example_shape]`` and ``counts``
    ``[num_tasks, num_classes]`` int64 (examples ever inserted per ring), both on ``device``.
    ``num_tasks`` only preallocates: adding a batch of a later task grows the storage to hold it
    (one copy of the memory per new task), so the memory is sized by ``per_class`` alone, as in
    the paper (m examples per class per task).
    Row ``r`` holds class ``r // m % num_classes`` of task ``r // (m*num_classes)``, so labels
    and task ids are not stored per example (two constant row -> label / task tables of
    ``rows`` int64 each make sampling two small gathers). The memory also keeps, on the host, how many examples each
    task received (the batch size and task id of :meth:`add` are host values): :meth:`sample`
    rejects an empty selection from these counters, without a host-device synchronisation.

    Args:
        num_tasks: tasks preallocated, >= 1 (task ids ``0 .. num_tasks-1`` need no growth; a later
            task id grows the memory, and ``num_tasks`` with it).
        num_classes: C, number of classes per task (labels are ``0 .. C-1``), >= 1.
        per_class: m, examples kept per class per task (m in {1, 3, 5} in HAL), >= 1.
        example_shape: shape of one example, e.g. ``(784,)`` or ``(3, 32, 32)``.
        dtype: storage dtype (float32, float64, float16, bfloat16, or uint8 for images).
        device: storage device.
    """

    def __init__(self, num_tasks: int, num_classes: int, per_class: int, example_shape,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.num_tasks = as_int("num_tasks", num_tasks, low=1)
        self.num_classes = as_int("num_classes", num_classes, low=1)
        self.per_class = as_int("per_class", per_class, low=1)
        self.example_shape = as_shape("example_shape", example_shape)
        self.dtype = as_dtype("dtype", dtype)
        rows = self.num_tasks * self.num_classes * self.per_class
        self.data = torch.zeros((rows,) + self.example_shape, dtype=self.dtype, device=device)
        self.counts = torch.zeros(self.num_tasks, self.num_classes, dtype=torch.int64, device=device)
        self.device = self.data.device
        self._inserted = [0] * self.num_tasks  # host side: examples ever added per task
        # the filled rows of the last selection drawn from without replacement, keyed by the
        # selection and its tasks' insert counts (a task's counts only change when it is written):
        # replay draws from the previous tasks, which stay fixed during a task
        self._filled_cache: Optional[tuple[tuple, Tensor, Tensor, Tensor]] = None
        self._make_row_tables()

    def _make_row_tables(self) -> None:
        # label and task id of every row (constant tables: a gather is cheaper than arithmetic)
        ring = torch.arange(self.data.shape[0], device=self.device) // self.per_class
        self._row_label, self._row_task = ring % self.num_classes, ring // self.num_classes
        self._filled_cache = None

    def reserve(self, num_tasks: int) -> None:
        """Grow the storage to hold tasks ``0 .. num_tasks-1`` (nothing happens if it already
        does). Stored examples, counters and row order are kept; new rings start empty."""
        num_tasks = as_int("num_tasks", num_tasks, low=1)
        extra = num_tasks - self.num_tasks
        if extra <= 0:
            return
        rows = extra * self.num_classes * self.per_class
        self.data = torch.cat([self.data, self.data.new_zeros((rows,) + self.example_shape)])
        self.counts = torch.cat([self.counts, self.counts.new_zeros(extra, self.num_classes)])
        self._inserted += [0] * extra
        self.num_tasks = num_tasks
        self._make_row_tables()

    # ------------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        """Number of rows: ``num_tasks * num_classes * per_class``."""
        return self.data.shape[0]

    @property
    def inserted(self) -> tuple[int, ...]:
        """Examples ever added to each task (host-side counters; no synchronisation)."""
        return tuple(self._inserted)

    def tasks_with_data(self) -> list[int]:
        """Task ids that hold at least one example (host-side; no synchronisation)."""
        return [t for t, n in enumerate(self._inserted) if n > 0]

    def __len__(self) -> int:
        """Filled slots: ``sum over rings of min(counts, m)`` (reads ``counts``: syncs on a GPU)."""
        return int(self.counts.clamp(max=self.per_class).sum())

    def __repr__(self) -> str:
        return (f"RingBuffer(num_tasks={self.num_tasks}, num_classes={self.num_classes}, "
                f"per_class={self.per_class}, example_shape={self.example_shape}, "
                f"dtype={self.dtype}, device={self.device})")

    def _shrink(self, num_tasks: int) -> None:
        rows = num_tasks * self.num_classes * self.per_class
        self.data, self.counts = self.data[:rows].clone(), self.counts[:num_tasks].clone()
        del self._inserted[num_tasks:]
        self.num_tasks = num_tasks
        self._make_row_tables()

    # ------------------------------------------------------------------ insert / sample
    def add(self, x: Tensor, y: Tensor, task: int) -> None:
        """Insert a batch of task ``task`` (one fused call; equal to one by one).

        Args:
            x: ``[B, *example_shape]`` examples, dtype and device of the memory (B may be 0).
            y: ``[B]`` int64 labels in ``[0, num_classes)``.
            task: task id of the whole batch, >= 0 (a task id >= ``num_tasks`` grows the memory).
        """
        b = check_batch(x, y, self.example_shape, self.dtype, self.device)
        task = as_int("task", task, low=0)
        if x.requires_grad:  # the memory stores a copy: no graph through it
            x = x.detach()
        grown_from = self.num_tasks if task >= self.num_tasks else None
        self.reserve(task + 1)
        try:
            ops.ring_insert_(self.data, self.counts, x, y, task)
        except Exception:
            if grown_from is not None:  # the op rejected the batch before writing: undo the growth
                self._shrink(grown_from)
            raise
        self._inserted[task] += b

    def _selection(self, tasks) -> list[int]:
        if tasks is None:
            sel = self.tasks_with_data()
        else:
            sel = as_task_list("tasks", tasks, self.num_tasks)
        if not any(self._inserted[t] for t in sel):
            what = "the memory is empty" if tasks is None else f"tasks {sel} hold no examples"
            raise ValueError(f"cannot sample: {what}")
        return sel

    def sample_indices(self, n: int, tasks: Optional[Iterable[int]] = None,
                       generator: Optional[torch.Generator] = None, replacement: bool = True) -> Tensor:
        """``[n]`` int64 rows of ``data``, uniform over the filled slots of ``tasks``; with
        ``replacement=False``, ``min(n, N)`` distinct rows (N: filled slots of the selection).

        Args: as :meth:`sample`.
        """
        n = as_int("n", n, low=0)
        sel = self._selection(tasks)
        if replacement:
            return ops.ring_sample(self.counts, self.per_class, sel, n, generator)
        rows = self._filled_rows(sel)[0]
        pick = torch.randperm(rows.numel(), generator=generator, device=self.device)[:n]
        return rows[pick]

    def _filled_rows(self, sel: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, labels, task_ids)`` of the filled slots of tasks ``sel``, in row order (cached)."""
        key = (tuple(sel), tuple(self._inserted[t] for t in sel))
        cached = self._filled_cache
        if cached is None or cached[0] != key:
            m, C = self.per_class, self.num_classes
            sel_t = torch.tensor(sel, dtype=torch.int64, device=self.device)
            filled = self.counts.index_select(0, sel_t).clamp(max=m)  # [S, C]
            slot = torch.arange(m, device=self.device)
            ring = sel_t.view(-1, 1) * C + torch.arange(C, device=self.device)  # [S, C] ring ids
            rows = (ring.unsqueeze(-1) * m + slot)[slot < filled.unsqueeze(-1)]  # filled rows, in order
            cached = self._filled_cache = (key, rows, self._row_label[rows], self._row_task[rows])
        return cached[1:]

    def sample(self, n: int, tasks: Optional[Iterable[int]] = None,
               generator: Optional[torch.Generator] = None,
               replacement: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``n`` stored examples uniformly from the filled slots of ``tasks``.

        With replacement (default; one fused op), every filled slot of the selected tasks has
        probability 1/N per draw (N: filled slots of the selection), so a task or class weighs by
        the examples it holds. Without (``replacement=False``), the draw is ``min(n, N)`` distinct
        slots, a uniformly random subset in random order: every stored example when the selection
        holds fewer than ``n``, as in the HAL / A-GEM authors' code
        (``np.random.choice(filled, batch, replace=False)``; ``arange`` below a batch).

        Args:
            n: number of draws, >= 0.
            tasks: task ids to draw from: any iterable of ints, e.g. ``[0, 2]`` or
                ``range(current)`` ("all previous tasks"); None: every task that holds data.
                Raises ValueError, without a host-device sync, when they hold no examples.
            generator: torch.Generator on the memory's device (None: the global one).
            replacement: draw with replacement (True) or distinct slots (False).

        Returns:
            ``(x, y, task_ids)``: ``[n, *example_shape]`` examples (a copy), ``[n]`` int64
            labels and ``[n]`` int64 task ids (``min(n, N)`` rows without replacement).
        """
        n = as_int("n", n, low=0)
        if not replacement:
            rows, labels, task_ids = self._filled_rows(self._selection(tasks))
            pick = torch.randperm(rows.numel(), generator=generator, device=self.device)[:n]
            return self.data.index_select(0, rows[pick]), labels[pick], task_ids[pick]
        sel = self._selection(tasks)
        rows, labels, task_ids, _ = ops.ring_sample_rows(self.data, self.counts, sel, n, generator)
        return rows, labels, task_ids

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: a copy of the storage and the counters.

        The tensors are copies (adding to the memory later does not change a state_dict taken
        before); the configuration is stored beside them and checked by :meth:`load_state_dict`.
        """
        return {
            "num_tasks": self.num_tasks,
            "num_classes": self.num_classes,
            "per_class": self.per_class,
            "example_shape": self.example_shape,
            "dtype": self.dtype,
            "data": self.data.detach().clone(),
            "counts": self.counts.clone(),
            "inserted": torch.tensor(self._inserted, dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a memory of the same configuration (any device).

        ``num_tasks`` may differ (a memory grows as tasks arrive): this memory takes the state's
        size. Everything is checked before anything is written: a rejected state changes nothing.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (a RingBuffer.state_dict()), got {type(state).__name__}")
        keys = ("num_tasks", "num_classes", "per_class", "example_shape", "dtype", "data", "counts", "inserted")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; expected a RingBuffer.state_dict()")
        num_tasks = as_int("state['num_tasks']", state["num_tasks"], low=1)
        for k in ("num_classes", "per_class", "example_shape", "dtype"):
            have = getattr(self, k)
            got = tuple(state[k]) if k == "example_shape" else state[k]
            if got != have:
                raise ValueError(f"state[{k!r}] is {got!r} but this memory has {k}={have!r}")
        data, counts, inserted = state["data"], state["counts"], state["inserted"]
        rows = num_tasks * self.num_classes * self.per_class
        for k, t, shape, dtype in (("data", data, (rows,) + self.example_shape, self.dtype),
                                   ("counts", counts, (num_tasks, self.num_classes), torch.int64),
                                   ("inserted", inserted, (num_tasks,), torch.int64)):
            if not isinstance(t, Tensor) or t.shape != shape or t.dtype != dtype:
                raise ValueError(f"state[{k!r}] must be a {dtype} tensor of shape {tuple(shape)}, got "
                                 + (f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__))
        counts_cpu = counts.detach().to("cpu")
        inserted_list = [int(v) for v in inserted.detach().to("cpu")]
        if bool((counts_cpu < 0).any()):
            raise ValueError("state['counts'] must be >= 0")
        if counts_cpu.sum(1).tolist() != inserted_list:
            raise ValueError(f"state['inserted'] {inserted_list} does not match the per-task sums of "
                             f"state['counts'] {counts_cpu.sum(1).tolist()}")
        if num_tasks != self.num_tasks:
            self.data = self.data.new_zeros((rows,) + self.example_shape)
            self.counts = self.counts.new_zeros(num_tasks, self.num_classes)
            self.num_tasks = num_tasks
            self._make_row_tables()
        with torch.no_grad():
            self.data.copy_(data)
            self.counts.copy_(counts)
        self._inserted = inserted_list
        self._filled_cache = None
