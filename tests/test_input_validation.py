"""Issue 11, section 3: input is rejected clearly, never silently replaced.

CLI items drive ``fastcl.cli.main`` as a user would, with tiny runs on the IDX fixture; each
rejected run must exit with status 2, say what is wrong in one line on stderr and write no results.
"""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from fastcl.algorithms import FTML, FTMLConfig
from fastcl.cli import main
from fastcl.data import DataSourceError, load_cifar100, read_idx, split_cifar100, write_idx
from fastcl.data import streams as streams_module
from fastcl.data.streams import Stream, Task
from fastcl.experiments import LEARNERS, build_learner
from fastcl.finite import FiniteGuard, NonFiniteError
from fastcl.models import ConvNet
from fastcl.experiments.ftml import run_online_learner
from fastcl.rundir import load_checkpoint
from fastcl.train import run_stream
from test_data import _write_cifar100

TINY = ["--tasks", "2", "--per-task", "20", "--no-plots", "--no-progress"]
#: the smallest runs of each family, so that a check that does not fire ends quickly
SMALL = {
    "er-ring": TINY,
    "maml": ["--iterations", "1", "--maml-eval-curves", "2", "--no-plots", "--no-progress"],
    "cts": ["--repetitions", "1", "--inner-steps", "2", "--cts-test-steps", "2", "--no-plots", "--no-progress"],
}
#: learners whose family reads no --data here (MAML's sinusoids, CTS's synthetic2d): fastcl run refuses it
NO_DATA = ("maml", "cts")


def _run(args, tmp_path, data_dir, capsys, name="out"):
    """``fastcl run ARGS`` into its own output directory, with ``--data`` where the family reads
    it; (exit status, stderr, output directory)."""
    out = tmp_path / name
    data = [] if args[0] in NO_DATA else ["--data", str(data_dir)]
    rc = main(["run", *args, *data, "--out", str(out)])
    return rc, capsys.readouterr().err, out


def _rejected(args, tmp_path, data_dir, capsys, *messages):
    rc, err, out = _run(args, tmp_path, data_dir, capsys)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastcl run: "), err
    for m in messages:
        assert m in err, err
    assert not (out / "results.json").exists()
    return err


# ------------------------------------------------------------------------------ numeric options
@pytest.mark.parametrize("learner, flag, value", [
    ("maml", "--shots", "0"), ("maml", "--meta-batch", "0"), ("maml", "--iterations", "0"),
    ("maml", "--inner-steps", "-1"), ("maml", "--shots", "-3"), ("maml", "--maml-query", "0"),
    ("maml", "--maml-eval-curves", "0"), ("maml", "--maml-checkpoint-every", "0"),
    ("cts", "--inner-steps", "0"), ("cts", "--repetitions", "0"), ("cts", "--tasks", "0"),
    ("cts", "--cts-test-steps", "0"), ("cts", "--cts-eval-every", "0"), ("cts", "--nproc", "0"),
    ("er-ring", "--tasks", "0"), ("er-ring", "--per-task", "0"), ("er-ring", "--memory", "-1"),
    ("er-ring", "--seeds", "0"), ("er-ring", "--seed-offset", "-1"), ("er-ring", "--skip-first", "-1"),
    ("er-ring", "--threads", "0"),
])
def test_zero_and_negative_counts_are_rejected_naming_the_flag(tmp_path, data_dir, capsys, learner, flag, value):
    low = 0 if flag in ("--inner-steps", "--seed-offset", "--skip-first") and learner != "cts" else 1
    _rejected([learner, *SMALL[learner], flag, value], tmp_path, data_dir, capsys,
              f"{flag} must be >= {low}, got {value}")


def test_ftml_flags_are_checked_too(tmp_path, data_dir, capsys):
    _rejected(["ftml", *TINY, "--test-per-task", "0"], tmp_path, data_dir, capsys, "--test-per-task must be >= 1")
    _rejected(["ftml", *TINY, "--shots", "0"], tmp_path, data_dir, capsys, "--shots must be >= 1")
    _rejected(["ftml", *TINY, "--proficiency", "0"], tmp_path, data_dir, capsys,
              "--proficiency (an accuracy) must be in (0, 1]")
    for bad in ("10,x", "0,10", ","):
        _rejected(["ftml", *TINY, f"--arrivals={bad}"], tmp_path, data_dir, capsys,
                  "--arrivals expects comma-separated ints >= 1")


def test_tasks_and_skip_first_say_what_is_wrong(tmp_path, data_dir, capsys):
    err = _rejected(["er-ring", *TINY, "--tasks", "0"], tmp_path, data_dir, capsys, "--tasks must be >= 1, got 0")
    assert "skip_first" not in err
    _rejected(["er-ring", *TINY, "--skip-first", "2"], tmp_path, data_dir, capsys,
              "--skip-first (2) must be < --tasks (2)")
    # without --tasks: the stream's default (23 for permuted-mnist)
    _rejected(["er-ring", "--skip-first", "23", "--no-progress"], tmp_path, data_dir, capsys,
              "--skip-first (23) must be < --tasks (23)")


# ------------------------------------------------------------------------------ --set
@pytest.mark.parametrize("learner, item, expected", [
    ("er-ring", "lr=abc", "--set lr: expects a number"),
    ("hal", "k=1.5", "--set k: expects an int"),
    ("hal", "input_range=a,b", "--set input_range: expects comma-separated numbers"),
    ("hal", "first_order=maybe", "--set first_order: expects true or false"),
    ("maml", "inner_lr=abc", "--set inner_lr: expects a number"),
    ("cts", "meta_lr=fast", "--set meta_lr: expects a number"),
])
def test_set_names_the_key_and_the_expected_type(tmp_path, data_dir, capsys, learner, item, expected):
    err = _rejected([learner, *SMALL.get(learner, TINY), "--set", item], tmp_path, data_dir, capsys, expected)
    assert repr(item.split("=", 1)[1]) in err  # and the value it got


def test_set_unknown_key_lists_the_valid_ones(tmp_path, data_dir, capsys):
    _rejected(["er-ring", *TINY, "--set", "nosuch=1"], tmp_path, data_dir, capsys,
              "no setting 'nosuch'", "lr", "per_class", "replay_batch")


# ------------------------------------------------------------------------------ learner names
@pytest.mark.parametrize("names", ["er-ring,maml", "maml,er-ring", "cts,ftml", "hal,maml,reptile"])
def test_learners_of_different_families_are_explained_in_any_order(tmp_path, data_dir, capsys, names):
    err = _rejected([names, *TINY], tmp_path, data_dir, capsys, "belong to different families",
                    "cannot run together")
    assert "unknown" not in err
    for name in names.split(","):
        assert name in err


def test_unknown_learner_lists_the_known_ones(tmp_path, data_dir, capsys):
    err = _rejected(["er-ring,nosuch", *TINY], tmp_path, data_dir, capsys, "unknown learner 'nosuch'")
    for name in ("er-ring", "hal", "maml", "cts", "ftml"):
        assert name in err


# ------------------------------------------------------------------------------ --cts-start
@pytest.mark.parametrize("form", [["--cts-start", "-5,5"], ["--cts-start=-5,5"], ["--cts-start", "-2.5,-1e-1"]])
def test_cts_start_documented_negative_form_parses(tmp_path, data_dir, capsys, form):
    rc, err, out = _run(["cts", *SMALL["cts"], *form], tmp_path, data_dir, capsys)
    assert rc == 0, err
    value = form[-1].split("=")[-1]
    phi0 = json.loads((out / "results.json").read_text())["learners"]["cts"]["runs"][0]["phi"][0]
    assert phi0 == [float(v) for v in value.split(",")]


@pytest.mark.parametrize("value", ["1,2,3", "a,b", "-5,nan"])
def test_cts_start_bad_value_is_rejected_before_running(tmp_path, data_dir, capsys, value):
    _rejected(["cts", *SMALL["cts"], "--cts-start", value], tmp_path, data_dir, capsys,
              "--cts-start must be two finite numbers")


# ------------------------------------------------------------------------------ data files
def _gz_bytes(raw: bytes) -> bytes:
    return gzip.compress(raw)


def _idx_header(type_code: int, shape) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


TRAIN_X, TRAIN_Y = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_X, TEST_Y = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def _short_header(d):
    (d / TRAIN_X).write_bytes(_gz_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00"))
    return TRAIN_X, "header is truncated"


def _bad_gzip(d):
    (d / TRAIN_X).write_bytes(b"this is not gzip data at all")
    return TRAIN_X, "cannot be read"


def _truncated_gzip(d):
    raw = (d / TRAIN_X).read_bytes()
    (d / TRAIN_X).write_bytes(raw[: len(raw) // 2])
    return TRAIN_X, "cannot be read"


def _images_32(d):
    write_idx(d / TRAIN_X, np.zeros((60, 32, 32), np.uint8))
    return TRAIN_X, "expected 28x28"


def _float_idx(d):
    a = np.zeros((20, 28, 28), ">f4")
    (d / TEST_X).write_bytes(_idx_header(0x0D, a.shape) + a.tobytes())
    return TEST_X, "holds >f4 values"


def _labels_12(d):
    write_idx(d / TEST_Y, np.full(20, 12, np.uint8))
    return TEST_Y, "holds label 12"


def _label_count(d):
    write_idx(d / TEST_Y, np.zeros(19, np.uint8))
    return TEST_Y, "labels of shape (19,) for the 20 images"


def _empty_test(d):
    write_idx(d / TEST_X, np.zeros((0, 28, 28), np.uint8))
    write_idx(d / TEST_Y, np.zeros(0, np.uint8))
    return TEST_X, "the t10k split is empty"


@pytest.mark.parametrize("damage", [_short_header, _bad_gzip, _truncated_gzip, _images_32, _float_idx, _labels_12,
                                    _label_count, _empty_test])
def test_bad_idx_files_are_named_with_their_problem(tmp_path, data_dir, capsys, damage):
    name, problem = damage(data_dir)
    _rejected(["er-ring", *TINY], tmp_path, data_dir, capsys, str(data_dir / name), problem)


def test_read_idx_short_header_is_a_data_source_error(tmp_path):
    (tmp_path / "a.idx").write_bytes(bytes([0, 0, 8, 2]) + b"\x00\x00\x00\x01\x00")
    with pytest.raises(DataSourceError, match="header is truncated"):
        read_idx(tmp_path / "a.idx")


def _cifar(tmp_path, damage=None):
    (tmp_path / "cifar").mkdir()
    d = _write_cifar100(tmp_path / "cifar")
    if damage is not None:
        damage(d)
    return d


def _garbage(d):
    (d / "train").write_bytes(b"\x80\x04garbage that is no pickle" * 10)


def _truncated(d):
    raw = (d / "train").read_bytes()
    (d / "train").write_bytes(raw[: len(raw) // 2])


def _empty(d):
    (d / "test").write_bytes(b"")


def _labels_100(d):
    with open(d / "test", "rb") as f:
        obj = pickle.load(f)
    obj[b"fine_labels"] = [100 + (i % 3) for i in range(len(obj[b"fine_labels"]))]
    (d / "test").write_bytes(pickle.dumps(obj))


def _foreign_pickle(d):
    import collections

    (d / "train").write_bytes(pickle.dumps(collections.OrderedDict(a=1)))


def _no_images(d):
    with open(d / "test", "rb") as f:
        obj = pickle.load(f)
    obj[b"fine_labels"], obj[b"data"] = [], np.zeros((0, 3072), np.uint8)
    (d / "test").write_bytes(pickle.dumps(obj))


@pytest.mark.parametrize("damage, file, problem", [
    (_garbage, "train", "not a CIFAR-100 python file"), (_truncated, "train", "truncated"),
    (_empty, "test", "is empty"), (_labels_100, "test", "holds fine label 10"),
    (_foreign_pickle, "train", "collections.OrderedDict"), (_no_images, "test", "the split is empty"),
])
def test_bad_cifar_files_are_named_with_their_problem(tmp_path, capsys, damage, file, problem):
    d = _cifar(tmp_path, damage)
    with pytest.raises(DataSourceError, match=problem) as e:
        load_cifar100(d)
    assert str(d / file) in str(e.value)
    rc = main(["run", "er-ring", "--stream", "split-cifar100", "--tasks", "20", "--data", str(d), "--out",
               str(tmp_path / "out"), "--no-progress", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and str(d / file) in err and problem in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_cifar_task_without_test_images_is_refused(tmp_path):
    d = _cifar(tmp_path)
    with open(d / "test", "rb") as f:
        obj = pickle.load(f)
    obj[b"fine_labels"] = [i % 50 for i in range(len(obj[b"fine_labels"]))]  # classes 50..99 missing
    (d / "test").write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=r"task 10 \(classes \[50, 51, 52, 53, 54\]\) has no test images"):
        split_cifar100(d)


# ------------------------------------------------------------------------------ --tasks 100000
def test_huge_task_count_is_refused_up_front_with_the_bytes(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setattr(streams_module, "available_memory", lambda: 2**30)  # 1 GiB, on any machine
    need = 100_000 * (20 + 20) * 784 * 4
    _rejected(["er-ring", "--tasks", "100000", "--per-task", "20", "--no-plots", "--no-progress"], tmp_path,
              data_dir, capsys, f"needs {need:,} bytes", f"only {2**30:,} bytes", "lower --tasks or --per-task")


def test_available_memory_is_a_positive_number_or_unknown():
    have = streams_module.available_memory()
    assert have is None or have > 0


# ------------------------------------------------------------------------------ NaN / inf
def _stream(bad_task=None, value=float("nan")):
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(3):
        x = torch.rand(30, 784, generator=g)
        if t == bad_task:
            x[:] = value
        y = torch.randint(0, 10, (30,), generator=g)
        tasks.append(Task(t, x, y, x[:10].nan_to_num(0.5), y[:10], list(range(10))))
    return Stream("permuted-mnist", tasks, 10, (784,))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_run_stream_stops_on_a_bad_input_naming_task_and_batch(tmp_path, value):
    stream = _stream(bad_task=1, value=value)
    learner = build_learner("er-ring", stream, 1, {}, seed=0)
    ck = tmp_path / "ck.pt"
    with pytest.raises(NonFiniteError, match=r"non-finite input .* at task 1, batch 0"):
        run_stream(learner, stream, checkpoint=ck, progress=False)
    assert load_checkpoint(ck)["next_task"] == 1  # task 1's poisoned state is not saved
    # off: it trains on the garbage and the weights are poisoned
    learner = build_learner("er-ring", stream, 1, {}, seed=0)
    run_stream(learner, stream, progress=False, check_finite=False)
    assert not all(bool(torch.isfinite(p).all()) for p in learner.model.parameters())


def test_diverging_learner_is_stopped_in_fastcl_run_and_the_option_turns_it_off(tmp_path, data_dir, capsys):
    _rejected(["er-ring", *TINY, "--set", "lr=1e30"], tmp_path, data_dir, capsys,
              "non-finite weights (NaN or inf) at task 0, batch", "--no-finite-check")
    rc, err, out = _run(["er-ring", *TINY, "--set", "lr=1e30", "--no-finite-check"], tmp_path, data_dir, capsys, "b")
    assert rc == 0 and (out / "results.json").exists()


def test_diverging_maml_is_stopped_naming_the_iteration(tmp_path, data_dir, capsys):
    _rejected(["maml", *SMALL["maml"], "--set", "inner_lr=1e30"], tmp_path, data_dir, capsys,
              "non-finite loss (NaN or inf) at maml seed 0, meta-iteration 0")


def test_diverging_cts_is_stopped_naming_the_step(tmp_path, data_dir, capsys):
    diverging = ["cts", *SMALL["cts"], "--inner-steps", "4", "--set", "inner_lr=1e30"]
    _rejected(diverging, tmp_path, data_dir, capsys, "non-finite", "at cts seed 0, inner step")
    rc, err, out = _run(diverging + ["--no-finite-check"], tmp_path, data_dir, capsys, "b")
    assert rc == 0, err


class _NaNRainbow:
    """Two Rainbow-shaped tasks; task 1's images are NaN."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.tasks = []
        for k in range(2):
            x = torch.rand(20, 3, 28, 28, generator=g)
            if k == 1:
                x[:] = float("nan")
            y = torch.randint(0, 10, (20,), generator=g)
            self.tasks.append(Task(k, x, y, x[:5].nan_to_num(0.5), y[:5], list(range(10)), {}))

    def __len__(self):
        return len(self.tasks)

    def task(self, k):
        return self.tasks[k]


def test_online_loop_stops_on_a_bad_input_naming_task_and_arrival():
    def learner():
        torch.manual_seed(0)
        return FTML(ConvNet(channels=4, depth=2), (3, 28, 28), FTMLConfig(meta_steps=1, finetune_steps=1,
                                                                           inner_steps=1, inner_batch=4))

    with pytest.raises(NonFiniteError, match=r"non-finite input .* at ftml: task 1, arrival 0"):
        run_online_learner(learner(), _NaNRainbow(), arrivals=(10,), progress=False, desc="ftml")
    records = run_online_learner(learner(), _NaNRainbow(), arrivals=(10,), progress=False, check_finite=False)
    assert len(records) == 2


def test_finite_guard_locates_the_first_bad_record_and_syncs_only_on_check():
    guard = FiniteGuard("step {}", every=0)
    guard.record(0, loss=1.0, x=torch.ones(3))
    guard.record(1, loss=2.0, x=torch.tensor([1.0, float("inf")]))
    assert isinstance(guard._pending[-1][2], torch.Tensor)  # a flag on the tensor's device, not read yet
    guard.record(2, loss=float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite x .* at step 1"):
        guard.check()
    guard.check()  # the flags were consumed
    guard.record(3, weights=[torch.ones(2), torch.tensor([float("nan")])])
    with pytest.raises(NonFiniteError, match="non-finite weights .* at step 3"):
        guard.check()
    off = FiniteGuard("step {}", enabled=False)
    off.record(0, loss=float("nan"))
    off.check()
    auto = FiniteGuard("step {}", every=2)
    auto.record(0, loss=1.0)
    with pytest.raises(NonFiniteError, match="at step 1"):
        auto.record(1, loss=float("inf"))  # the second record triggers the check


# ------------------------------------------------------------------------------ learners
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_treats_an_empty_batch_as_a_no_op(name):
    stream = _stream()
    learner = build_learner(name, stream, 1, {}, seed=0)
    learner.observe(stream[0].x_train[:10], stream[0].y_train[:10], 0)
    before = [p.detach().clone() for p in learner.model.parameters()]
    memory = getattr(learner, "memory", None)
    size = None if memory is None else len(memory)
    learner.observe(torch.zeros(0, 784), torch.zeros(0, dtype=torch.int64), 0)
    # bitwise the same (NaN where it was NaN: emcl-lr diverges at its first batch in the default reading)
    assert all(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True) for a, b in zip(before, learner.model.parameters()))
    assert (None if memory is None else len(memory)) == size
    learner.observe(stream[0].x_train[10:20], stream[0].y_train[10:20], 0)  # and it still learns after
    assert not all(torch.equal(a, b) for a, b in zip(before, learner.model.parameters())) or name == "multitask"


def test_hal_end_task_refuses_a_bad_task_and_grows_past_num_tasks():
    stream = _stream()
    learner = build_learner("hal", stream, 1, {}, seed=0)
    learner.observe(stream[0].x_train[:10], stream[0].y_train[:10], 0)
    before = learner.state_dict()
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match=r"task must be an int >= 0"):
            learner.end_task(bad)
    after = learner.state_dict()  # the refused calls changed nothing
    assert torch.equal(before["anchor_x"], after["anchor_x"]) and torch.equal(before["anchor_mask"], after["anchor_mask"])
    # num_tasks (3 here) only preallocates: a later task (tasks 1-4 skipped) ends with its anchors built
    learner.end_task(5)
    assert learner.anchor_mask.numel() == 6 * learner.num_classes
    assert learner.anchor_mask.view(6, -1)[5].all() and not learner.anchor_mask.view(6, -1)[:5].any()
