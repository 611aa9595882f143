"""Run a continual learner over a stream: single pass, evaluation after every task, checkpoints.

:func:`run_stream` trains on each task's batches in order (one pass, batch 10 by default),
evaluates on the test split of every task after each task (row ``i`` of the accuracy matrix),
and, with a ``checkpoint`` path, saves learner + generators + matrix after every task, so an
interrupted run resumed with ``resume=True`` ends with exactly the metrics of an uninterrupted
run with the same seed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from .algorithms.base import Learner
from .data.streams import Stream
from .finite import FiniteGuard
from .metrics import AccuracyMatrix
from .rundir import learner_fields, load_checkpoint, resume_message, save_checkpoint

__all__ = ["RunResult", "run_stream", "evaluate", "checkpoint_fingerprint"]


@dataclass
class RunResult:
    """What one run produced.

    Attributes:
        acc: the accuracy matrix (``acc.values[i][j]``: accuracy on task j after task i).
        train_seconds: training time per task (evaluation excluded).
        losses: mean training loss per task.
    """

    acc: AccuracyMatrix
    train_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def summary(self, skip_first: int = 0) -> dict[str, float]:
        out = self.acc.summary(skip_first)
        out["train_seconds"] = float(sum(self.train_seconds))
        return out


@torch.no_grad()
def evaluate(learner: Learner, stream: Stream, batch_size: int = 1000) -> list[float]:
    """Test accuracy of ``learner`` on every task of ``stream``."""
    accs = []
    for task in stream:
        correct = 0
        for i in range(0, task.x_test.shape[0], batch_size):
            x, y = task.x_test[i : i + batch_size], task.y_test[i : i + batch_size]
            correct += int((learner.predict(x, task.task_id).argmax(1) == y).sum())
        accs.append(correct / max(1, task.x_test.shape[0]))
    return accs


def checkpoint_fingerprint(learner: Learner, stream: Stream, batch_size: int, seed: int,
                           extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The fingerprint :func:`run_stream` stores in its checkpoints (and checks on resume).

    Args:
        learner: the learner (its class and config count).
        stream: the stream (its name and length count).
        batch_size: examples per incoming batch.
        seed: seed of the batch order.
        extra: more fields that define the run.
    """
    return {**learner_fields(learner), "stream": stream.name, "tasks": len(stream), "batch_size": batch_size,
            "seed": seed, **(extra or {})}


def run_stream(learner: Learner, stream: Stream, *, batch_size: int = 10, seed: int = 0,
               checkpoint: Optional[str | os.PathLike] = None, resume: bool = False,
               progress: bool = True, stop_after: Optional[int] = None,
               on_task_end: Optional[Callable[[int, list[float]], None]] = None,
               fingerprint: Optional[dict[str, Any]] = None,
               log: Optional[Callable[[str], None]] = None, check_finite: bool = True) -> RunResult:
    """Train ``learner`` on ``stream`` task by task and fill the accuracy matrix.

    For each task ``t`` in order: ``learner.begin_task(t)``, ``learner.observe(x, y, t)`` for
    every batch of the task's training split (one pass, shuffled with ``seed``),
    ``learner.end_task(t)``, then the test accuracy of every task of the stream (``predict``),
    row ``t`` of the matrix. This is the loop ``fastcl run`` uses; it is also the entry point
    for a stream of one's own tensors (:meth:`fastcl.data.Stream.from_tensors`), available as
    ``fastcl.run_stream``.

    Args:
        learner: any :class:`~fastcl.algorithms.base.Learner`.
        stream: the tasks, a :class:`~fastcl.data.Stream`.
        batch_size: examples per incoming batch.
        seed: seed of the batch order.
        checkpoint: file written after every task (and read with ``resume``), checksummed, with the
            run's fingerprint (learner class and config, stream name and length, batch size, seed,
            and ``fingerprint``): see :mod:`fastcl.rundir`.
        resume: continue from ``checkpoint`` if it exists; a damaged checkpoint or one of another
            run (fingerprints differ) raises :class:`~fastcl.rundir.RunDirError`.
        progress: a progress bar per task (on stderr).
        stop_after: stop after this many tasks (to simulate an interruption in tests).
        on_task_end: called with (task, accuracies) after each task's evaluation.
        fingerprint: more fields that define the run (data digest, memory, ...), stored and checked.
        log: told "resuming from task k/T" when a checkpoint is resumed.
        check_finite: stop with :class:`~fastcl.finite.NonFiniteError` (naming the task and batch)
            when an input batch or the weights after a batch hold NaN / inf (a diverging loss shows
            there; some learners return a NaN loss when they train nothing); checked once per task,
            before the checkpoint.
    """
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a fastcl.data.Stream (build one from tensors with "
                        f"Stream.from_tensors), got {type(stream).__name__}")
    if not isinstance(learner, Learner):
        raise TypeError(f"learner must be a fastcl.algorithms.Learner, got {type(learner).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    result = RunResult(AccuracyMatrix(len(stream)))
    gen = torch.Generator().manual_seed(seed)
    start = 0
    fingerprint = checkpoint_fingerprint(learner, stream, batch_size, seed, fingerprint)
    guard = FiniteGuard("task {}, {}", enabled=check_finite)
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path")
        if Path(checkpoint).is_file():
            state = load_checkpoint(checkpoint, fingerprint)
            learner.load_state_dict(state["learner"])
            gen.set_state(state["generator"])
            result.acc.load_state_dict(state["acc"])
            result.train_seconds = list(state["train_seconds"])
            result.losses = list(state["losses"])
            start = int(state["next_task"])
            if log is not None:
                log(resume_message(start, len(stream), checkpoint))
    for task in stream.tasks[start:]:
        t = task.task_id
        if stop_after is not None and t >= stop_after:
            break
        n_batches = (task.x_train.shape[0] + batch_size - 1) // batch_size
        bar = tqdm(task.batches(batch_size, gen), total=n_batches, disable=not progress,
                   desc=f"task {t + 1}/{len(stream)}", leave=False, unit="batch")
        losses = []
        begin = time.perf_counter()
        learner.begin_task(t)
        for i, (x, y) in enumerate(bar):
            losses.append(learner.observe(x, y, t))
            guard.record(t, f"batch {i}", input=x, weights=getattr(learner, "params", ()))
        learner.end_task(t)
        guard.record(t, "end_task", weights=getattr(learner, "params", ()))
        guard.check()
        result.train_seconds.append(time.perf_counter() - begin)
        result.losses.append(sum(losses) / max(1, len(losses)))
        accs = evaluate(learner, stream)
        result.acc.add_row(accs)
        if on_task_end is not None:
            on_task_end(t, accs)
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"learner": learner.state_dict(), "generator": gen.get_state(),
                                         "acc": result.acc.state_dict(), "train_seconds": result.train_seconds,
                                         "losses": result.losses, "next_task": t + 1}, fingerprint)
    return result
