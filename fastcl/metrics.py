"""Continual-learning metrics on the accuracy matrix.

``acc[i][j]`` is the test accuracy on task ``j`` after the learner finished training on task
``i`` (0-based here; the papers count from 1). Entries for tasks not yet seen (``j > i``) may
be filled (they are used by nothing below) or nan.

* :func:`average_accuracy`: HAL Eq. 2 (= EMCL's ACC, Eq. 22): mean of the last row.
* :func:`maximum_forgetting`: HAL Eq. 3: mean over the first T-1 tasks of the drop from the
  best accuracy seen before the last task to the final accuracy.
* :func:`backward_transfer`: EMCL Eq. 23: mean over the first T-1 tasks of
  ``acc[T-1][j] - acc[j][j]`` (negative means forgetting).
* :func:`learning_accuracy`: mean of the diagonal (accuracy on a task right after learning it).

Every function takes ``skip_first``: the first k tasks used for hyperparameter search, which
the HAL protocol (following A-GEM) leaves out of the metrics; the metrics are then those of the
sub-matrix ``acc[k:, k:]``.

For online meta-learning (FTML, Finn et al. 2019), :func:`learning_efficiency` reads a task's
learning curve (test performance against the number of datapoints seen): the datapoints needed to
reach the proficiency threshold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "AccuracyMatrix",
    "average_accuracy",
    "maximum_forgetting",
    "backward_transfer",
    "learning_accuracy",
    "summarize",
    "learning_efficiency",
]


def _matrix(acc, skip_first: int) -> np.ndarray:
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"acc must be a square T x T matrix, got shape {a.shape}")
    if isinstance(skip_first, bool) or not isinstance(skip_first, (int, np.integer)) or skip_first < 0:
        raise ValueError(f"skip_first must be an int >= 0, got {skip_first!r}")
    if skip_first >= a.shape[0]:
        raise ValueError(f"skip_first={skip_first} leaves no task of {a.shape[0]}")
    a = a[skip_first:, skip_first:]
    lower = np.tril(a)
    if np.isnan(lower[np.tril_indices(a.shape[0])]).any():
        raise ValueError("acc has nan on or below the diagonal: every task must be evaluated after it was seen")
    return a


def average_accuracy(acc, skip_first: int = 0) -> float:
    """Final average accuracy (HAL Eq. 2, EMCL Eq. 22): ``mean_j acc[T-1][j]``."""
    a = _matrix(acc, skip_first)
    return float(a[-1].mean())


def maximum_forgetting(acc, skip_first: int = 0) -> float:
    """Final maximum forgetting (HAL Eq. 3): ``mean_{j<T-1} max_{l<T-1} (acc[l][j] - acc[T-1][j])``.

    The max runs over the rows ``l`` in which task ``j`` had been seen (``l >= j``); 0 for a
    single task.
    """
    a = _matrix(acc, skip_first)
    t = a.shape[0]
    if t < 2:
        return 0.0
    drops = [max(a[l, j] - a[-1, j] for l in range(j, t - 1)) for j in range(t - 1)]
    return float(np.mean(drops))


def backward_transfer(acc, skip_first: int = 0) -> float:
    """Backward transfer (EMCL Eq. 23): ``mean_{j<T-1} (acc[T-1][j] - acc[j][j])``; 0 for one task."""
    a = _matrix(acc, skip_first)
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[-1, j] - a[j, j] for j in range(t - 1)]))


def learning_accuracy(acc, skip_first: int = 0) -> float:
    """Mean accuracy on each task right after learning it: ``mean_j acc[j][j]``."""
    a = _matrix(acc, skip_first)
    return float(np.diag(a).mean())


def summarize(acc, skip_first: int = 0) -> dict[str, float]:
    """All metrics of one accuracy matrix, as a dict."""
    return {
        "accuracy": average_accuracy(acc, skip_first),
        "forgetting": maximum_forgetting(acc, skip_first),
        "bwt": backward_transfer(acc, skip_first),
        "learning_accuracy": learning_accuracy(acc, skip_first),
    }


class AccuracyMatrix:
    """Accumulates ``acc[i][j]`` row by row as a continual run proceeds.

    Args:
        num_tasks: T.
    """

    def __init__(self, num_tasks: int):
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        self.values = np.full((num_tasks, num_tasks), np.nan)
        self.rows = 0

    def add_row(self, accuracies: Sequence[float]) -> None:
        """Record the accuracies on every task after training on the next task."""
        row = np.asarray(accuracies, dtype=np.float64)
        t = self.values.shape[0]
        if self.rows >= t:
            raise ValueError(f"all {t} rows are already recorded")
        if row.shape != (t,):
            raise ValueError(f"accuracies must have {t} entries, got shape {row.shape}")
        self.values[self.rows] = row
        self.rows += 1

    def summary(self, skip_first: int = 0) -> dict[str, float]:
        """Metrics of the rows recorded so far (the square block of the tasks seen)."""
        if self.rows == 0:
            raise ValueError("no row recorded yet")
        return summarize(self.values[: self.rows, : self.rows], skip_first)

    def state_dict(self) -> dict:
        return {"values": self.values.copy(), "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        values = np.asarray(state["values"], dtype=np.float64)
        if values.shape != self.values.shape:
            raise ValueError(f"values has shape {values.shape}; expected {self.values.shape}")
        self.values = values.copy()
        self.rows = int(state["rows"])


def learning_efficiency(datapoints, scores, threshold: float, *, higher_is_better: bool = True,
                        unreached: float = float("nan")) -> float:
    """Datapoints needed to reach proficiency (FTML, Alg. 1 lines 11-12 and Sec. 5).

    The learning efficiency of a task is ``|D_t|`` at the first evaluation whose score reaches
    the threshold ``gamma``: accuracy ``>= gamma`` (``higher_is_better``, e.g. gamma = 0.9 on
    Rainbow MNIST) or loss ``< gamma`` (``higher_is_better=False``, Alg. 1 line 11).

    Args:
        datapoints: ``[E]`` sizes of ``D_t`` at the evaluations, strictly increasing, > 0.
        scores: ``[E]`` test performance at those sizes.
        threshold: gamma.
        higher_is_better: accuracy-like (True) or loss-like (False) scores.
        unreached: returned when no evaluation reaches the threshold (nan by default; pass e.g.
            the task's total size to cap it, as a plot of efficiency needs).
    """
    d = np.asarray(datapoints, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if d.ndim != 1 or s.shape != d.shape:
        raise ValueError(f"datapoints and scores must be 1-D of one length, got shapes {d.shape} and {s.shape}")
    if d.size and ((d <= 0).any() or (np.diff(d) <= 0).any()):
        raise ValueError(f"datapoints must be > 0 and strictly increasing, got {d.tolist()}")
    if np.isnan(s).any() or not np.isfinite(threshold):
        raise ValueError("scores and threshold must not be nan")
    hit = s >= threshold if higher_is_better else s < threshold
    return float(d[np.argmax(hit)]) if hit.any() else float(unreached)
