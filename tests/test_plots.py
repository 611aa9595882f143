"""The plots of fastcl run name tasks with integers counted from 1, and a short MAML run's
training curve is visible."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fastcl.experiments.plots import task_ticks  # noqa: E402


def _labels(fig, axis):
    fig.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def _visible(labels, low, high):
    return [int(t) for t in labels if low <= int(t) <= high]


def test_matrix_ticks_are_tasks_from_one():
    fig, ax = plt.subplots()
    ax.imshow(np.zeros((3, 3)))
    task_ticks(ax.xaxis, zero_based=True)
    task_ticks(ax.yaxis, zero_based=True)
    for axis in (ax.xaxis, ax.yaxis):
        labels = _labels(fig, axis)
        assert all(t.lstrip("-").isdigit() for t in labels), labels
        assert _visible(labels, 1, 3) == [1, 2, 3]
    plt.close(fig)


def test_curve_ticks_are_integers():
    fig, ax = plt.subplots()
    ax.plot(np.arange(1, 4), [0.5, 0.6, 0.7])
    task_ticks(ax.xaxis)
    labels = _labels(fig, ax.xaxis)
    assert all(t.lstrip("-").isdigit() for t in labels), labels  # no 1.5, 2.5
    assert _visible(labels, 1, 3) == [1, 2, 3]
    plt.close(fig)


def test_a_maml_run_shorter_than_a_checkpoint_interval_draws_its_points(tmp_path, monkeypatch):
    from fastcl import rundir
    from fastcl.cli import main

    figures = {}

    def capture(fig, path, **kwargs):
        figures[path.name] = fig

    monkeypatch.setattr(rundir, "atomic_savefig", capture)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    rc = main(["run", "maml", "--iterations", "3", "--shots", "2", "--meta-batch", "2", "--maml-eval-curves", "2",
               "--maml-eval-points", "3", "--no-progress", "--out", str(tmp_path / "run")])
    assert rc == 0
    (line,) = figures["training.png"].axes[0].get_lines()
    assert line.get_marker() == "o" and len(line.get_xdata()) == 1  # one record, drawn as a point
