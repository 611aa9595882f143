import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fastcl.algorithms import (FTML, FTMLConfig, FollowTheLeader, FromScratch, FromScratchAdam, TrainOnEverything,
                               sgd_adapt)
from fastcl.algorithms.ftml import ONLINE_LEARNERS
from fastcl.cli import main
from fastcl.data import RAINBOW_COLOURS, RainbowMNIST, rainbow_transform
from fastcl.metrics import learning_efficiency
from fastcl.models import ConvNet
from fastcl.experiments.ftml import run_online_learner


SHAPE = (3, 28, 28)


def _tiny_net():
    return ConvNet(channels=4, depth=2)


def _mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


# ------------------------------------------------------------------------------ inner adaptation
@settings(max_examples=20)
@given(steps=st.integers(0, 4), lr=st.floats(0.0, 0.5), smoothing=st.sampled_from([0.0, 0.1]),
       seed=st.integers(0, 2**16))
def test_sgd_adapt_equals_a_hand_written_sgd_loop(steps, lr, smoothing, seed):
    torch.manual_seed(seed)
    model = _mlp()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    got = sgd_adapt(model, params, x, y, lr=lr, steps=steps, label_smoothing=smoothing)
    ref = copy.deepcopy(model)
    for _ in range(steps):
        loss = F.cross_entropy(ref(x), y, label_smoothing=smoothing)
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= lr * g
    for k, p in ref.named_parameters():
        torch.testing.assert_close(got[k], p, rtol=1e-5, atol=1e-6)
    for k, p in model.named_parameters():  # the model itself is untouched
        torch.testing.assert_close(p, params[k])


def _autograd_meta_grad(model, x, y, xv, yv, lr, steps, first_order, smoothing=0.1):
    ps = list(model.parameters())
    names = [k for k, _ in model.named_parameters()]
    w = list(ps)
    for _ in range(steps):
        loss = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, w)), (x,)), y, label_smoothing=smoothing)
        g = torch.autograd.grad(loss, w, create_graph=not first_order)
        w = [a - lr * b for a, b in zip(w, g)]
    if first_order:  # FOMAML: the gradient at the adapted parameters, taken as d/dw
        w = [a.detach().requires_grad_() for a in w]
        lv = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, w)), (xv,)), yv, label_smoothing=smoothing)
        return dict(zip(names, torch.autograd.grad(lv, w)))
    lv = F.cross_entropy(torch.func.functional_call(model, dict(zip(names, w)), (xv,)), yv, label_smoothing=smoothing)
    return dict(zip(names, torch.autograd.grad(lv, ps)))


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_autograd_second_and_first_order(first_order):
    model = _tiny_net()
    learner = FTML(model, SHAPE, FTMLConfig(inner_steps=2, first_order=first_order))
    x, y = torch.rand(2, 6, *SHAPE), torch.randint(0, 10, (2, 6))
    xv, yv = torch.rand(2, 6, *SHAPE), torch.randint(0, 10, (2, 6))
    refs = [_autograd_meta_grad(model, x[i], y[i], xv[i], yv[i], 0.1, 2, first_order) for i in range(2)]
    g1, _ = learner.meta_gradient(x[:1], y[:1], xv[:1], yv[:1])
    for k in g1:
        torch.testing.assert_close(g1[k], refs[0][k], rtol=1e-4, atol=1e-6)
    g2, _ = learner.meta_gradient(x, y, xv, yv)  # two tasks together under vmap: the mean
    for k in g2:
        torch.testing.assert_close(g2[k], (refs[0][k] + refs[1][k]) / 2, rtol=1e-4, atol=1e-6)
    if not first_order:  # the Hessian terms matter: second order differs from first order
        fo = _autograd_meta_grad(model, x[0], y[0], xv[0], yv[0], 0.1, 2, True)
        assert any(not torch.allclose(g1[k], fo[k], rtol=1e-3, atol=1e-6) for k in g1)


# ------------------------------------------------------------------------------ learners
def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_ftml_meta_updates_use_adam_on_the_meta_gradient():
    cfg = FTMLConfig(meta_steps=3, finetune_steps=2, inner_steps=1, seed=4)
    learner = FTML(_tiny_net(), SHAPE, cfg)
    before = _params(learner.model)
    x, y = _data(12)
    loss = learner.observe(x, y, 0)
    assert math.isfinite(loss) and learner.updates == 3
    assert any(not torch.equal(before[k], v) for k, v in _params(learner.model).items())
    adapted = learner.adapt(0)  # Update-Procedure = finetune_steps SGD steps on all of D_0
    ref = sgd_adapt(learner.model, _params(learner.model), x, y, lr=cfg.inner_lr, steps=2, label_smoothing=0.1)
    for k in adapted:
        torch.testing.assert_close(adapted[k], ref[k])
    assert learner.adapt(0) is adapted  # cached until the next arrival
    logits = learner.predict(x[:3], 0)
    assert logits.shape == (3, 10)


def test_baselines_follow_their_definitions():
    x0, y0 = _data(10, 0)
    x1, y1 = _data(10, 1)
    cfg = FTMLConfig(meta_steps=2, finetune_steps=1)
    toe = TrainOnEverything(_tiny_net(), SHAPE, cfg)
    toe.observe(x0, y0, 0)
    assert toe.updates == 2
    for k, v in toe.adapt(0).items():  # TOE is tested without adaptation
        torch.testing.assert_close(v, dict(toe.model.named_parameters())[k].detach())
    ftl = FollowTheLeader(_tiny_net(), SHAPE, cfg)
    before = _params(ftl.model)
    ftl.observe(x0, y0, 0)  # FTL trains on the tasks before the current one: none yet
    assert ftl.updates == 0 and all(torch.equal(before[k], v) for k, v in _params(ftl.model).items())
    assert any(not torch.equal(before[k], v) for k, v in ftl.adapt(0).items())  # but fine-tunes on D_0
    ftl.observe(x1, y1, 1)
    assert ftl.updates == 2
    scratch = FromScratch(_tiny_net(), SHAPE, FTMLConfig(meta_steps=0, finetune_steps=1))
    scratch.observe(x0, y0, 0)
    first = _params(scratch.model)
    scratch.observe(x0[:2], y0[:2], 0)  # same task: the same model goes on
    assert all(torch.equal(first[k], v) for k, v in _params(scratch.model).items())
    scratch.observe(x1, y1, 1)  # new task: a fresh initialisation
    assert all(not torch.equal(first[k], v) for k, v in _params(scratch.model).items())
    # the paper's baseline: no training on arrival, whatever N_meta; the Update-Procedure on D_1
    # (finetune_steps SGD steps of alpha from the fresh initialisation) is all it learns
    scratch.config.meta_steps = 3
    fresh = _params(scratch.model)
    scratch.observe(x1[:2], y1[:2], 1)
    assert scratch.updates == 0 and all(torch.equal(fresh[k], v) for k, v in _params(scratch.model).items())
    xd, yd = scratch.buffer.data(1)
    expect = sgd_adapt(scratch.model, fresh, xd, yd, lr=0.1, steps=1, label_smoothing=0.1)
    for k, v in scratch.adapt(1).items():
        torch.testing.assert_close(v, expect[k])
    # scratch-adam (fastcl's earlier reading): N_meta Adam steps per arrival on D_t alone
    adam = FromScratchAdam(_tiny_net(), SHAPE, FTMLConfig(meta_steps=0, finetune_steps=1))
    adam.observe(x0, y0, 0)
    adam.observe(x1, y1, 1)
    adam.config.meta_steps = 3
    adam.buffer.add(x0, torch.full_like(y0, 9), 0)  # training sees D_1 only: labels of task 0 never show up
    seen = []
    orig = adam.buffer.sample
    adam.buffer.sample = lambda k, n, g=None: (seen.append(k), orig(k, n, g))[1]
    adam.observe(x1[:2], y1[:2], 1)
    assert seen == [1, 1, 1] and adam.updates == 3


@pytest.mark.parametrize("name", sorted(ONLINE_LEARNERS))
def test_checkpoint_resume_gives_identical_results(tmp_path, data_dir, name):
    stream = RainbowMNIST(num_tasks=3, per_task=30, seed=1, source=data_dir, test_per_task=12)
    cfg = dict(meta_steps=2, finetune_steps=2, inner_steps=2, inner_batch=4, seed=3)

    def learner():
        torch.manual_seed(0)
        return ONLINE_LEARNERS[name](_tiny_net(), SHAPE, FTMLConfig(**cfg))

    kw = dict(arrivals=(10, 20), seed=2, progress=False)
    full_learner = learner()
    full = run_online_learner(full_learner, stream, **kw)
    ck = tmp_path / "ck.pt"
    part = run_online_learner(learner(), stream, checkpoint=ck, stop_after=1, **kw)
    assert len(part) == 1
    resumed_learner = learner()
    resumed = run_online_learner(resumed_learner, stream, checkpoint=ck, resume=True, **kw)
    strip = lambda recs: json.dumps([{k: v for k, v in r.items() if not k.endswith("seconds")} for r in recs])  # noqa: E731
    assert strip(resumed) == strip(full)
    assert [r["datapoints"] for r in full] == [[10, 20, 30]] * 3
    for k, v in _params(full_learner.model).items():
        torch.testing.assert_close(_params(resumed_learner.model)[k], v, rtol=0, atol=0)


def test_clear_errors():
    learner = FTML(_tiny_net(), SHAPE, FTMLConfig(meta_steps=1))
    with pytest.raises(ValueError, match=r"expected \[B, 3, 28, 28\]"):
        learner.observe(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"y has shape \(3,\); expected \[4\]"):
        learner.observe(torch.rand(4, *SHAPE), torch.zeros(3, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"x_tr must be \[K, B, 3, 28, 28\]"):
        learner.meta_gradient(torch.rand(4, *SHAPE), torch.zeros(4, dtype=torch.int64),
                              torch.rand(1, 4, *SHAPE), torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x_val must be"):
        learner.meta_gradient(torch.rand(1, 4, *SHAPE), torch.zeros(1, 4, dtype=torch.int64),
                              torch.rand(1, 4, *SHAPE), torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, 28, 28\]"):
        learner.predict(torch.rand(2, 784), 0)
    with pytest.raises(ValueError, match="task 0 holds no data"):
        learner.adapt(0)
    learner.observe(*_data(4), task=1)
    with pytest.raises(ValueError, match="tasks never go back"):
        learner.observe(*_data(4), task=0)
    for bad, match in (({"inner_lr": -1.0}, "inner_lr"), ({"inner_steps": 1.5}, "inner_steps"),
                       ({"meta_batch": 0}, "meta_batch"), ({"finetune_batch": 0}, "finetune_batch"),
                       ({"label_smoothing": 1.0}, "label_smoothing")):
        with pytest.raises(ValueError, match=match):
            FTMLConfig(**bad)
    with pytest.raises(TypeError, match="FTMLConfig"):
        FTML(_tiny_net(), SHAPE, {"meta_steps": 1})


# ------------------------------------------------------------------------------ metric
def test_learning_efficiency_on_hand_made_curves():
    sizes = [10, 20, 50, 100, 900]
    assert learning_efficiency(sizes, [0.5, 0.89, 0.9, 0.95, 0.99], 0.9) == 50
    assert learning_efficiency(sizes, [0.95, 0.5, 0.5, 0.5, 0.5], 0.9) == 10  # the first time it is reached
    assert math.isnan(learning_efficiency(sizes, [0.1] * 5, 0.9))
    assert learning_efficiency(sizes, [0.1] * 5, 0.9, unreached=900) == 900
    assert learning_efficiency(sizes, [3.0, 1.0, 0.06, 0.05, 0.01], 0.05, higher_is_better=False) == 900
    assert learning_efficiency(sizes, [3.0, 1.0, 0.04, 0.05, 0.01], 0.05, higher_is_better=False) == 50
    with pytest.raises(ValueError, match="strictly increasing"):
        learning_efficiency([10, 10], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError, match="one length"):
        learning_efficiency([10, 20], [0.1], 0.9)


# ------------------------------------------------------------------------------ Rainbow MNIST
def test_rainbow_mnist_tasks(data_dir):
    rb = RainbowMNIST(num_tasks=56, per_task=25, seed=0, source=data_dir)
    assert len(set(rb.transforms)) == 56  # every colour x scale x rotation exactly once
    assert set(rb.transforms) == set(itertools.product(RAINBOW_COLOURS, (1.0, 0.5), (0, 1, 2, 3)))
    assert rb.transforms == RainbowMNIST(56, 25, seed=0, source=data_dir).transforms
    assert rb.transforms != RainbowMNIST(56, 25, seed=1, source=data_dir).transforms
    # the 60-image pool serves 56 x 25 images cyclically: distinct inside a task, every image used
    idx = torch.stack([rb.train_indices(k) for k in range(56)])
    assert all(len(set(row.tolist())) == 25 for row in idx)
    counts = torch.bincount(idx.flatten(), minlength=60)
    assert counts.min() >= 56 * 25 // 60 and counts.max() <= 56 * 25 // 60 + 1
    t = rb.task(5)
    assert t.x_train.shape == (25, *SHAPE) and t.x_test.shape == (20, *SHAPE)
    assert t.x_train.dtype == torch.float32 and 0 <= t.x_train.min() and t.x_train.max() <= 1
    with pytest.raises(ValueError, match="task index"):
        rb.task(56)
    with pytest.raises(ValueError, match="num_tasks"):
        RainbowMNIST(num_tasks=57, source=data_dir)
    with pytest.raises(ValueError, match="per_task=61 exceeds"):
        RainbowMNIST(num_tasks=2, per_task=61, source=data_dir)


def test_rainbow_transform():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 2:6, 20:26] = 1.0  # ink near the top-right corner
    colour = RAINBOW_COLOURS["blue"]
    out = rainbow_transform(x, colour, 1.0, 0)
    torch.testing.assert_close(out[:, :, 27, 0], torch.tensor(colour).expand(2, 3))  # the background
    torch.testing.assert_close(out[:, :, 3, 22], torch.ones(2, 3))  # white ink
    turned = rainbow_transform(x, colour, 1.0, 1)
    torch.testing.assert_close(turned, torch.rot90(out, 1, dims=(2, 3)))
    small = rainbow_transform(x, colour, 0.5, 0)
    ink = (small - torch.tensor(colour).view(1, 3, 1, 1)).abs().sum(1)
    rows, cols = torch.nonzero(ink[0] > 0.1, as_tuple=True)
    assert rows.min() >= 7 and cols.max() <= 21  # shrunk towards the centre
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        rainbow_transform(torch.zeros(2, 28, 28), colour, 1.0, 0)


# ------------------------------------------------------------------------------ fastcl run
def test_run_command_writes_results_and_plots(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    rc = main(["run", "ftml,toe,ftl,scratch,scratch-adam", "--stream", "rainbow-mnist", "--tasks", "2", "--per-task", "20",
               "--arrivals", "10", "--test-per-task", "10", "--data", str(data_dir), "--out", str(out),
               "--no-progress", "--iterations", "1", "--inner-steps", "1", "--shots", "4",
               "--set", "finetune_steps=1", "--seeds", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert all(f"| {n} |" in printed for n in ONLINE_LEARNERS)
    res = json.loads((out / "results.json").read_text())
    assert res["arrivals"] == [10, 20]
    r = res["learners"]["ftml"]
    assert r["config"]["inner_batch"] == 4 and r["config"]["meta_steps"] == 1 and r["config"]["inner_steps"] == 1
    rec = r["runs"][1]["records"][1]
    assert rec["datapoints"] == [10, 20] and len(rec["accuracy"]) == 2
    expect = learning_efficiency(rec["datapoints"], rec["accuracy"], 0.9)
    assert rec["efficiency"] == expect or (math.isnan(expect) and math.isnan(rec["efficiency"]))
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("learner,seed,task") and len(rows) == 1 + 5 * 2 * 2
    assert (out / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite(r["mean"]["accuracy_final"])


@pytest.mark.parametrize("args, message", [
    (["--stream", "permuted-mnist"], "rainbow-mnist"),
    (["--set", "nope=1"], "no setting 'nope'"),
    (["--arrivals", "a,b"], "--arrivals expects"),
    (["--set", "meta_batch=0"], "meta_batch"),
])
def test_run_command_errors(tmp_path, data_dir, capsys, args, message):
    rc = main(["run", "ftml", "--tasks", "1", "--per-task", "10", "--data", str(data_dir), "--out",
               str(tmp_path / "o"), "--no-progress", "--no-plots"] + args)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_benchmark_table_runs_and_checks_the_gradients(capsys):
    from fastcl.benchmarks import ftml as bench_ftml

    rows = bench_ftml.run(tasks=(2,), steps=(1,), repeats=1)  # asserts fastcl == loop before timing
    assert [(r["order"], r["tasks"], r["inner_steps"]) for r in rows] == [("second", 2, 1), ("first", 2, 1)]
    assert all(r["fastcl_ms"] > 0 and r["loop_ms"] > 0 for r in rows)
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "ftml", "--tasks", "1", "--steps", "1", "--repeats", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "| second | 1 | 1 |" in capsys.readouterr().out


def test_ftml_seed_left_out_follows_torch_seed():
    """FTMLConfig() without seed: torch.manual_seed fixes the learner's generator; other torch seeds
    give other draws (not one silent seed 0)."""
    def built(torch_seed, seed=None):
        torch.manual_seed(torch_seed)
        learner = FTML(_tiny_net(), SHAPE, FTMLConfig(seed=seed))
        return learner.seed, torch.randint(0, 10**9, (4,), generator=learner.generator)

    (a, da), (b, db), (c, dc) = built(3), built(3), built(4)
    assert a == b != c and torch.equal(da, db) and not torch.equal(da, dc)
    assert built(3, seed=7)[0] == built(4, seed=7)[0] == 7
    with pytest.raises(ValueError, match="seed"):
        FTMLConfig(seed=-1)
