"""The plots of fastcl run name tasks with integers counted from 1 (the accuracy matrix, the
accuracy curve, FTML's efficiency panels, read from the saved figure objects), and a MAML run
too short to record a training curve writes no empty training.png."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture
def saved(monkeypatch):
    """The figures fastcl run saves, by file name (not written, not closed)."""
    from fastcl import rundir

    figures = {}

    def capture(fig, path, **kwargs):
        figures[path.name] = fig

    monkeypatch.setattr(rundir, "atomic_savefig", capture)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    return figures


def test_the_continual_plots_name_tasks_from_one(tmp_path, saved):
    from fastcl.experiments import continual

    T = 4
    acc = np.tril(np.full((T, T), 0.8)).tolist()
    results = {"stream": "permuted-mnist", "learners": {"er-ring": {"runs": [{"acc": acc}, {"acc": acc}]}}}
    continual._plot(results, tmp_path)
    (matrix,) = [ax for ax in saved["matrix.png"].axes if ax.get_title() == "er-ring"]
    for axis in (matrix.xaxis, matrix.yaxis):  # the image's rows / columns 0..T-1 are tasks 1..T
        labels = _labels(saved["matrix.png"], axis)
        assert all(t.lstrip("-").isdigit() for t in labels), labels
        assert _visible(labels, 1, T) == list(range(1, T + 1))
    curve = saved["accuracy.png"].axes[0]
    labels = _labels(saved["accuracy.png"], curve.xaxis)
    assert all(t.lstrip("-").isdigit() for t in labels), labels
    assert _visible(labels, 1, T) == list(range(1, T + 1))
    assert list(curve.get_lines()[0].get_xdata()) == list(range(1, T + 1))  # the first point is task 1


def test_the_ftml_efficiency_plot_names_tasks_from_one(tmp_path, saved):
    from fastcl.experiments import ftml

    T = 3
    records = [{"efficiency": 50.0, "datapoints": [10, 100, 900], "accuracy": [0.5, 0.9, 0.95]} for _ in range(T)]
    results = {"per_task": 900, "tasks": T, "learners": {"ftml": {"runs": [{"records": records}]}}}
    ftml._plot(results, tmp_path)
    fig = saved["efficiency.png"]
    assert len(fig.axes) == 3
    for ax in fig.axes:
        labels = _labels(fig, ax.xaxis)
        assert all(t.lstrip("-").isdigit() for t in labels), labels  # no 1.5, 2.5
        assert _visible(labels, 1, T) == list(range(1, T + 1))
        assert list(ax.get_lines()[0].get_xdata()) == list(range(1, T + 1))


MAML_TINY = ["run", "maml", "--iterations", "3", "--shots", "2", "--meta-batch", "2", "--maml-eval-curves", "2",
             "--maml-eval-points", "3", "--no-progress"]


def test_a_maml_run_shorter_than_a_checkpoint_interval_writes_no_training_plot(tmp_path, saved, capsys):
    """3 iterations at the default --maml-checkpoint-every 1000: one loss record, nothing to draw."""
    from fastcl.cli import main

    assert main([*MAML_TINY, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert set(saved) == {"fits.png"}
    assert "training.png not written: 3 iteration(s) hold 1 training-loss record" in out
    assert "--maml-checkpoint-every 1000" in out
    assert out.strip().endswith(", fits.png")  # where the results went names the files written, only those


def test_a_maml_run_of_several_records_draws_them_on_integer_iterations(tmp_path, saved, capsys):
    from fastcl.cli import main

    assert main([*MAML_TINY, "--maml-checkpoint-every", "1", "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip().endswith(", fits.png, training.png")
    fig = saved["training.png"]
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3] and line.get_marker() == "o"  # few records: drawn as points
    labels = _labels(fig, fig.axes[0].xaxis)
    assert all(t.lstrip("-").isdigit() for t in labels), labels
