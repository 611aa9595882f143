"""Reservoir-sampling episodic memory (algorithm R): a uniform sample of the whole stream."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor

from .. import ops
from ._checks import as_dtype, as_int, as_shape, as_task_list, check_batch

__all__ = ["ReservoirBuffer"]


class ReservoirBuffer:
    """Episodic memory of ``capacity`` examples that is a uniform sample of the stream (algorithm R).

    The replay memory of La-MAML and of EMCL's La-MAML baseline (EMCL, Sec. IV and Table II:
    memory size 200 / 500). Example number ``s`` of the stream (0-based) goes to slot ``s``
    while ``s < capacity``; after that it replaces slot ``j = floor(U * (s + 1))`` when
    ``j < capacity`` (Vitter's algorithm R), so every example seen so far is in the memory
    with probability ``capacity / n_seen``. A batch is inserted in one fused call, equal to
    inserting its examples one by one.

    Storage, all on ``device``: ``data`` ``[capacity, *example_shape]``, ``labels`` and
    ``tasks`` ``[capacity]`` int64. ``n_seen`` (examples seen) is kept on the host.

    Args:
        capacity: number of slots, >= 1.
        example_shape: shape of one example, e.g. ``(784,)`` or ``(3, 32, 32)``.
        dtype: storage dtype (float32, float64, float16, bfloat16, or uint8 for images).
        device: storage device.
    """

    def __init__(self, capacity: int, example_shape, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        capacity = as_int("capacity", capacity, low=1)
        self.example_shape = as_shape("example_shape", example_shape)
        self.dtype = as_dtype("dtype", dtype)
        self.data = torch.zeros((capacity,) + self.example_shape, dtype=self.dtype, device=device)
        self.labels = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.tasks = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.device = self.data.device
        self._n_seen = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    @property
    def n_seen(self) -> int:
        """Examples of the stream seen so far (offered to :meth:`add`), kept or not."""
        return self._n_seen

    def __len__(self) -> int:
        """Filled slots: ``min(n_seen, capacity)`` (host-side; no synchronisation)."""
        return min(self._n_seen, self.capacity)

    def __repr__(self) -> str:
        return (f"ReservoirBuffer(capacity={self.capacity}, example_shape={self.example_shape}, "
                f"dtype={self.dtype}, device={self.device}, n_seen={self._n_seen})")

    def add(self, x: Tensor, y: Tensor, task: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Offer a batch of task ``task`` to the reservoir (one fused call; equal to one by one).

        Args:
            x: ``[B, *example_shape]`` examples, dtype and device of the memory (B may be 0).
            y: ``[B]`` int64 labels.
            task: task id stored with the batch, >= 0.
            generator: torch.Generator on the memory's device (None: the global one); ``B``
                uniforms are drawn from it on every call.

        Returns:
            ``[B]`` int64: the slot each example went to, -1 where it was not kept.
        """
        b = check_batch(x, y, self.example_shape, self.dtype, self.device)
        task = as_int("task", task, low=0)
        if x.requires_grad:  # the memory stores a copy: no graph through it
            x = x.detach()
        slots = ops.reservoir_insert_(self.data, self.labels, self.tasks, x, y, task, self._n_seen, generator)
        self._n_seen += b
        return slots

    def sample(self, n: int, tasks: Optional[Iterable[int]] = None,
               generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``n`` stored examples uniformly, with replacement.

        Args:
            n: number of draws, >= 0.
            tasks: None (every filled slot; no synchronisation) or an iterable of task ids:
                only slots holding those tasks (this filters the stored task ids, which syncs
                with a GPU); ValueError when they hold no examples.
            generator: torch.Generator on the memory's device (None: the global one).

        Returns:
            ``(x, y, task_ids)``: ``[n, *example_shape]`` examples (a copy), ``[n]`` int64
            labels and ``[n]`` int64 task ids.
        """
        idx = self.sample_indices(n, tasks, generator)
        return self.data.index_select(0, idx), self.labels.index_select(0, idx), self.tasks.index_select(0, idx)

    def sample_indices(self, n: int, tasks: Optional[Iterable[int]] = None,
                       generator: Optional[torch.Generator] = None) -> Tensor:
        """``[n]`` int64 slots drawn uniformly, with replacement; arguments as :meth:`sample`."""
        n = as_int("n", n, low=0)
        filled = len(self)
        if tasks is None:
            if filled == 0:
                raise ValueError("cannot sample: the memory is empty")
            return torch.randint(0, filled, (n,), generator=generator, device=self.device)
        sel = as_task_list("tasks", tasks, None)
        want = torch.tensor(sel, dtype=torch.int64, device=self.device)
        pool = torch.isin(self.tasks[:filled], want).nonzero().squeeze(1)
        if pool.numel() == 0:
            raise ValueError(f"cannot sample: tasks {sel} hold no examples in the memory")
        return pool[torch.randint(0, pool.numel(), (n,), generator=generator, device=self.device)]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: a copy of the storage and ``n_seen``."""
        return {
            "capacity": self.capacity,
            "example_shape": self.example_shape,
            "dtype": self.dtype,
            "data": self.data.detach().clone(),
            "labels": self.labels.clone(),
            "tasks": self.tasks.clone(),
            "n_seen": self._n_seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a memory of the same configuration (any device).

        Everything is checked before anything is written: a rejected state changes nothing.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (a ReservoirBuffer.state_dict()), got {type(state).__name__}")
        keys = ("capacity", "example_shape", "dtype", "data", "labels", "tasks", "n_seen")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; expected a ReservoirBuffer.state_dict()")
        for k in ("capacity", "example_shape", "dtype"):
            have = getattr(self, k)
            got = tuple(state[k]) if k == "example_shape" else state[k]
            if got != have:
                raise ValueError(f"state[{k!r}] is {got!r} but this memory has {k}={have!r}")
        for k, shape, dtype in (("data", self.data.shape, self.dtype), ("labels", (self.capacity,), torch.int64),
                                ("tasks", (self.capacity,), torch.int64)):
            t = state[k]
            if not isinstance(t, Tensor) or t.shape != shape or t.dtype != dtype:
                raise ValueError(f"state[{k!r}] must be a {dtype} tensor of shape {tuple(shape)}, got "
                                 + (f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__))
        n_seen = as_int("state['n_seen']", state["n_seen"], low=0)
        with torch.no_grad():
            self.data.copy_(state["data"])
            self.labels.copy_(state["labels"])
            self.tasks.copy_(state["tasks"])
        self._n_seen = n_seen
