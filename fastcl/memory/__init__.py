"""Episodic memories: ring buffer (last m per class per task) and reservoir.

* :class:`RingBuffer`: HAL / ER-Ring, a FIFO ring of ``m`` examples per (task, class);
* :class:`ReservoirBuffer`: La-MAML / EMCL, a uniform sample of the stream (algorithm R);
* :class:`TaskBuffer`: FTML, every example seen, per task (uniform task, then minibatch draws).

Both keep their storage preallocated on one device, insert a batch with one fused call
(:func:`fastcl.ops.ring_insert_`, :func:`fastcl.ops.reservoir_insert_`), sample with
``sample(n, tasks=None, generator=None) -> (x, y, task_ids)`` and resume exactly from
``state_dict()`` / ``load_state_dict()``.
"""

from .reservoir import ReservoirBuffer
from .ring import RingBuffer
from .task_buffer import TaskBuffer

__all__ = ["RingBuffer", "ReservoirBuffer", "TaskBuffer"]
