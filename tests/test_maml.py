"""MAML / FOMAML / L2F: meta-gradients against finite differences and hand-written loops, the
FTML appendix-A closed-form optimum, L2F at gamma = 1 against MAML, resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from fastcl.experiments import maml as meta_experiments
from fastcl.algorithms import L2F, MAML, L2FConfig, MAMLConfig
from fastcl.cli import main as cli_main
from fastcl.data.meta_tasks import (SINUSOID_FAMILIES, TaskBatch, joint_optimum, maml_optimum, quadratic_moments,
                                    quadratic_tasks)
from fastcl.models import MLP


def tiny(seed=0, sizes=(1, 4, 1)):
    torch.manual_seed(seed)
    return MLP(sizes).double()


def sine_tasks(b=3, k=5, q=4, seed=0, family="sinusoid"):
    return SINUSOID_FAMILIES[family].sample(b, k, q, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def meta_grad(learner, tasks):
    return torch.autograd.grad(learner.outer_loss(tasks), learner.params)


def loop_meta_grad(model, tasks, lrs, first_order, loss_fn=F.mse_loss):
    """Per-task Python loop of plain autograd: the way learn2learn / higher compute it."""
    names = [n for n, _ in model.named_parameters()]
    theta = list(model.parameters())
    total = 0
    for i in range(tasks.num_tasks):
        fast = theta
        for lr in lrs:
            out = functional_call(model, dict(zip(names, fast)), (tasks.support_x[i],))
            g = torch.autograd.grad(loss_fn(out, tasks.support_y[i]), fast, create_graph=not first_order)
            fast = [p - lr * gi for p, gi in zip(fast, g)]
        out = functional_call(model, dict(zip(names, fast)), (tasks.query_x[i],))
        total = total + loss_fn(out, tasks.query_y[i]) / tasks.num_tasks
    return torch.autograd.grad(total, theta)


# ---------------------------------------------------------------------------- meta-gradients
def test_second_order_meta_gradient_matches_finite_differences():
    learner = MAML(tiny(), MAMLConfig(inner_steps=2, inner_lrs=(0.3, 0.1)))
    tasks = sine_tasks()
    theta = [p.detach().clone().requires_grad_(True) for p in learner.params]
    assert torch.autograd.gradcheck(lambda *ps: learner.outer_loss(tasks, params=ps), theta, eps=1e-6, atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 5), k=st.integers(1, 6), steps=st.integers(0, 3), first_order=st.booleans(),
       fused=st.booleans(), seed=st.integers(0, 10))
def test_batched_meta_gradient_equals_per_task_loop(b, k, steps, first_order, fused, seed):
    model = tiny(seed, (1, 5, 3, 1))
    lrs = tuple(0.05 * (s + 1) for s in range(steps))
    learner = MAML(model, MAMLConfig(inner_steps=steps, inner_lrs=lrs, first_order=first_order, fused_inner=fused))
    tasks = sine_tasks(b, k, 3, seed)
    got = meta_grad(learner, tasks)
    want = loop_meta_grad(model, tasks, lrs, first_order)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


def test_classification_meta_gradient_equals_per_task_loop():
    g = torch.Generator().manual_seed(0)
    xs, xq = torch.randn(3, 6, 4, generator=g, dtype=torch.float64), torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    tasks = TaskBatch(xs, torch.randint(0, 3, (3, 6), generator=g), xq, torch.randint(0, 3, (3, 5), generator=g))
    model = tiny(5, (4, 8, 3))
    learner = MAML(model, MAMLConfig(inner_steps=2, inner_lr=0.5, loss="cross_entropy"))
    for got, want in zip(meta_grad(learner, tasks), loop_meta_grad(model, tasks, (0.5, 0.5), False, F.cross_entropy)):
        torch.testing.assert_close(got, want)
    fast = learner.adapt(tasks.support_x, tasks.support_y)
    assert learner.predict(fast, tasks.query_x).shape == (3, 5, 3)


def test_first_order_is_second_order_without_hessian_terms():
    """One inner step: d/dtheta L'(theta - a g(theta)) = (I - a H) g'(theta_1); FOMAML keeps g'(theta_1)."""
    alpha = 0.2
    model = tiny(1, (1, 3, 1))
    tasks = sine_tasks(2, 4, 5, seed=3)
    so = MAML(model, MAMLConfig(inner_lr=alpha))
    fo = MAML(model, MAMLConfig(inner_lr=alpha, first_order=True))
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def unflat(v):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = v[i : i + s.numel()].view(s)
            i += s.numel()
        return out

    def loss(v, x, y):
        return F.mse_loss(functional_call(model, unflat(v), (x,)), y)

    want_so, want_fo = 0, 0
    for i in range(2):
        h = torch.func.hessian(loss)(flat0, tasks.support_x[i], tasks.support_y[i])
        g = torch.func.grad(loss)(flat0, tasks.support_x[i], tasks.support_y[i])
        gq = torch.func.grad(loss)(flat0 - alpha * g, tasks.query_x[i], tasks.query_y[i])
        want_fo = want_fo + gq / 2
        want_so = want_so + (gq - alpha * h @ gq) / 2
    got_so = torch.cat([g.reshape(-1) for g in meta_grad(so, tasks)])
    got_fo = torch.cat([g.reshape(-1) for g in meta_grad(fo, tasks)])
    torch.testing.assert_close(got_fo, want_fo)
    torch.testing.assert_close(got_so, want_so)
    assert (got_so - got_fo).abs().max() > 1e-4  # the dropped Hessian term is not negligible here


# ---------------------------------------------------------------------------- FTML appendix A
def test_quadratic_meta_gradient_and_optimum_are_the_closed_forms():
    alpha = 0.1
    tasks = quadratic_tasks(num_tasks=4, dim=3, points=16, seed=0)
    a, b = quadratic_moments(tasks)
    w_maml, w_joint = maml_optimum(tasks, alpha), joint_optimum(tasks)
    assert (w_maml - w_joint).norm() > 0.05  # the example separates the two solutions
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False).double()
    learner = MAML(model, MAMLConfig(inner_lr=alpha, meta_lr=0.05))
    # the meta-gradient at a random point: mean_i (I - aA_i) A_i (I - aA_i) w + (I - aA_i)^2 b_i
    w = model.weight.detach().reshape(-1)
    m = torch.eye(3, dtype=torch.float64) - alpha * a
    want = ((m @ a @ m @ w.view(3, 1)).squeeze(-1) + (m @ m @ b.unsqueeze(-1)).squeeze(-1)).mean(0)
    torch.testing.assert_close(meta_grad(learner, tasks)[0].reshape(-1), want)
    # Adam (step 0.05) does not settle on the optimum: it keeps oscillating about it, with an
    # amplitude set by the last bits of the start (nn.Linear's float32 init, which differs between
    # ATen's CPU capabilities): 1e-11 to 4e-5 after 1500 steps (was atol 1e-5, true on one CPU).
    # 1e-3 is still 50x below the distance between the two optima.
    for _ in range(1500):
        learner.meta_step(tasks)
    torch.testing.assert_close(model.weight.detach().reshape(-1), w_maml, atol=1e-3, rtol=0)
    # with no inner step MAML is joint training
    learner0 = MAML(torch.nn.Linear(3, 1, bias=False).double(), MAMLConfig(inner_steps=0, meta_lr=0.05))
    for _ in range(1500):
        learner0.meta_step(tasks)
    torch.testing.assert_close(learner0.model.weight.detach().reshape(-1), w_joint, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------- L2F
def _gamma_one(learner: L2F) -> None:
    last = learner.attenuator[-2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(40.0)  # sigmoid(40) == 1.0 exactly in float64
    return None


def test_l2f_with_gamma_one_equals_maml():
    tasks = [sine_tasks(3, 5, 5, seed=s) for s in range(4)]
    maml = MAML(tiny(2, (1, 6, 6, 1)), MAMLConfig(inner_steps=2))
    l2f = L2F(tiny(2, (1, 6, 6, 1)), L2FConfig(inner_steps=2))
    _gamma_one(l2f)
    assert torch.equal(l2f.gamma(tasks[0].support_x, tasks[0].support_y), torch.ones(3, 6, dtype=torch.float64))
    for t in tasks:
        assert l2f.meta_step(t).loss == pytest.approx(maml.meta_step(t).loss, rel=1e-12)
    for p, q in zip(l2f.params, maml.params):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_l2f_attenuates_each_tensor_and_trains_phi():
    l2f = L2F(tiny(3, (1, 5, 1)), L2FConfig(attenuator_layers=2))
    assert sum(isinstance(m, torch.nn.Linear) for m in l2f.attenuator) == 2
    tasks = sine_tasks(2, 5, 5)
    gamma = l2f.gamma(tasks.support_x, tasks.support_y)
    assert gamma.shape == (2, 4) and bool(((gamma > 0) & (gamma < 1)).all())
    start = l2f.initial_fast(tasks.support_x, tasks.support_y)
    for i in range(2):
        for l, (s, p) in enumerate(zip(start, l2f.params)):
            torch.testing.assert_close(s[i], gamma[i, l] * p)
    phi0 = [p.detach().clone() for p in l2f.attenuator.parameters()]
    l2f.meta_step(tasks)
    assert any(not torch.equal(a, b) for a, b in zip(phi0, l2f.attenuator.parameters()))
    # the same attenuation at evaluation: adapt starts from gamma * theta
    fast = l2f.adapt(tasks.support_x, tasks.support_y, steps=0)
    gamma = l2f.gamma(tasks.support_x, tasks.support_y)
    torch.testing.assert_close(fast[0][1], gamma[1, 0] * l2f.params[0].detach())


# ---------------------------------------------------------------------------- state, resume
@pytest.mark.parametrize("cls,cfg", [(MAML, MAMLConfig), (L2F, L2FConfig)])
def test_state_dict_round_trip_continues_identically(cls, cfg):
    tasks = [sine_tasks(2, 4, 4, seed=s) for s in range(4)]
    a = cls(tiny(4, (1, 5, 1)), cfg(inner_steps=2, clip_grad=1.0))
    for t in tasks:
        a.meta_step(t)
    b = cls(tiny(4, (1, 5, 1)), cfg(inner_steps=2, clip_grad=1.0))
    for t in tasks[:2]:
        b.meta_step(t)
    c = cls(tiny(9, (1, 5, 1)), cfg(inner_steps=2, clip_grad=1.0))
    c.load_state_dict(b.state_dict())
    for t in tasks[2:]:
        c.meta_step(t)
    assert c.steps == a.steps == 4
    for p, q in zip(a.meta_parameters(), c.meta_parameters()):
        assert torch.equal(p, q)


def test_run_resume_gives_identical_results(tmp_path):
    kw = dict(family="sinusoid-disjoint", shots=3, meta_batch=2, iterations=6, eval_curves=3, eval_points=5,
              checkpoint_every=3, plots=False, progress=False, log=lambda s: None)
    full = meta_experiments.run_meta_experiment(["maml-l2f"], out_dir=tmp_path / "a", **kw)
    meta_experiments.run_meta_experiment(["maml-l2f"], out_dir=tmp_path / "b", **{**kw, "iterations": 3})
    resumed = meta_experiments.run_meta_experiment(["maml-l2f"], out_dir=tmp_path / "b", resume=True, **kw)
    a, b = full["learners"]["maml-l2f"]["runs"][0], resumed["learners"]["maml-l2f"]["runs"][0]
    assert a["test_mse"] == b["test_mse"]
    assert [h[0] for h in b["history"]] == [3, 6] and a["history"][1][1] == b["history"][1][1]


def test_cli_run_writes_results_and_plots(tmp_path):
    rc = cli_main(["run", "maml,fomaml,maml-l2f", "--family", "sinusoid", "--shots", "5", "--iterations", "3",
                   "--maml-eval-curves", "4", "--maml-eval-points", "10", "--maml-checkpoint-every", "1",  # 3 loss records
                   "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    for f in ("results.json", "results.csv", "fits.png", "training.png"):
        assert (tmp_path / f).is_file()
    assert cli_main(["run", "maml", "--family", "nope", "--out", str(tmp_path), "--no-progress"]) == 2


# ---------------------------------------------------------------------------- bad input
def test_wrong_support_shapes_raise_clear_errors():
    learner = MAML(tiny(), MAMLConfig(), input_shape=(1,))
    t = sine_tasks(2, 5, 5)
    with pytest.raises(ValueError, match="support_y has shape"):
        learner.meta_step(t._replace(support_y=t.support_y[:, :4]))
    with pytest.raises(ValueError, match="support_x must be"):
        learner.adapt(t.support_x[0, :, 0], t.support_y[0])
    with pytest.raises(ValueError, match=r"support_x has shape .*expected \[B, K, 1\]"):
        learner.adapt(t.support_x.expand(2, 5, 3), t.support_y)
    with pytest.raises(ValueError, match="query set has 1 tasks"):
        learner.meta_step(t._replace(query_x=t.query_x[:1], query_y=t.query_y[:1]))
    with pytest.raises(TypeError, match="support_x must be a floating"):
        learner.adapt(t.support_x.long(), t.support_y)
    with pytest.raises(TypeError, match="TaskBatch"):
        learner.meta_step((t.support_x, t.support_y))
    with pytest.raises(ValueError, match="steps must be"):
        learner.adapt(t.support_x, t.support_y, steps=-1)


@pytest.mark.parametrize("kw,match", [({"inner_lr": -1.0}, "inner_lr"), ({"inner_steps": -1}, "inner_steps"),
                                      ({"inner_steps": 2, "inner_lrs": (0.1,)}, "inner_lrs"),
                                      ({"loss": "l1"}, "loss"), ({"clip_grad": float("nan")}, "clip_grad")])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        MAMLConfig(**kw)
    with pytest.raises(ValueError, match="attenuator_layers"):
        L2FConfig(attenuator_layers=0)


# ---------------------------------------------------------------------------- task families
def test_maml_paper_family_has_frequency_one_and_l2f_family_varies_it():
    g = torch.Generator().manual_seed(0)
    maml_curves = SINUSOID_FAMILIES["sinusoid-maml"].sample_curves(200, "train", g)
    assert torch.equal(maml_curves[:, 1], torch.ones(200, dtype=torch.float64))
    assert 0.1 <= float(maml_curves[:, 0].min()) and float(maml_curves[:, 0].max()) <= 5.0
    assert 0.0 <= float(maml_curves[:, 2].min()) and float(maml_curves[:, 2].max()) <= math.pi
    l2f_curves = SINUSOID_FAMILIES["sinusoid"].sample_curves(200, "train", g)
    assert 0.8 <= float(l2f_curves[:, 1].min()) < 0.85 and 1.15 < float(l2f_curves[:, 1].max()) <= 1.2


def test_sinusoid_families_sample_their_ranges():
    g = torch.Generator().manual_seed(0)
    fam = SINUSOID_FAMILIES["sinusoid-disjoint"]
    for split, (a, w, b) in (("train", ((0.1, 3.0), (0.8, 1.0), (0.0, math.pi / 2))),
                             ("test", ((3.0, 5.0), (1.0, 1.2), (math.pi / 2, math.pi)))):
        batch, curves = fam.sample(500, 5, 7, split, g, return_curves=True)
        for col, (lo, hi) in enumerate((a, w, b)):
            assert lo <= float(curves[:, col].min()) and float(curves[:, col].max()) <= hi
        assert batch.support_x.shape == (500, 5, 1) and batch.query_y.shape == (500, 7, 1)
        assert float(batch.support_x.abs().max()) <= 5.0
        # support_y is a*sin(w*x + b) at the float64 x, rounded to float32; here x is the float32
        # one, off by <= 2^-24*|x| <= 3e-7, which moves y by <= |a*w|*3e-7 <= 5*1.2*3e-7 = 1.8e-6
        # (atol 1e-6 held with 3% to spare for this draw, not by this bound).
        torch.testing.assert_close(batch.support_y.double(), fam.evaluate(curves, batch.support_x.double()),
                                   rtol=1e-6, atol=2e-6)
    with pytest.raises(ValueError, match="shots"):
        fam.sample(2, 0, 3)


# ---------------------------------------------------------------------------- benchmark
def test_bench_maml_impls_agree_and_command_runs(capsys, monkeypatch):
    from fastcl.benchmarks import maml as bench

    bench.check(True, 4, 2)
    bench.check(False, 3, 2)
    monkeypatch.setattr(bench, "CASES", [(True, 2, 1), (False, 2, 1)])
    assert cli_main(["bench", "maml", "--rounds", "1", "--min-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("| second | 2 | 1 |") == 1 and out.count("| first | 2 | 1 |") == 1 and "vmapped+fused" in out


# ---------------------------------------------------------------------------- the API from outside
def test_meta_step_takes_a_list_or_tuple_and_reports_norm_and_clipping():
    t = sine_tasks(3, 5, 4)
    a, b, c = (MAML(tiny(), MAMLConfig(clip_grad=clip)) for clip in (0.0, 0.0, 1e-3))
    as_list = a.meta_step(list(t))
    as_tuple = b.meta_step(tuple(t))
    assert as_list == as_tuple  # same learner, same batch: the same loss, norm and flag
    want = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in meta_grad(MAML(tiny()), t)]))
    assert as_list.grad_norm == pytest.approx(float(want), rel=1e-10)
    assert as_list.clipped is False
    clipped = c.meta_step(t)
    assert clipped.clipped is True and clipped.grad_norm == pytest.approx(as_list.grad_norm, rel=1e-10)
    assert MAML(tiny(), MAMLConfig(clip_grad=1e6)).meta_step(t).clipped is False


def test_outer_loss_gives_a_meta_gradient_without_a_step():
    learner = MAML(tiny())
    before = [p.detach().clone() for p in learner.params]
    grads = torch.autograd.grad(learner.outer_loss(list(sine_tasks())), learner.meta_parameters())
    assert all(g.abs().sum() > 0 for g in grads)
    assert all(torch.equal(p, q) for p, q in zip(learner.params, before)) and learner.steps == 0


def test_a_batch_without_its_task_dimension_is_an_error_not_a_misread():
    """[K, 1] support points of one task would be read as K tasks of one scalar example."""
    t = sine_tasks(1, 5, 4)
    learner = MAML(tiny())  # input_shape unknown: inferred from the first batch
    with pytest.raises(ValueError, match=r"support_x must be \[B, K, \*input_shape\].*unsqueeze\(0\)"):
        learner.meta_step((t.support_x[0], t.support_y[0], t.query_x[0], t.query_y[0]))
    assert learner.steps == 0 and learner.input_shape is None
    # scalar examples on purpose: said so with input_shape=()
    scalar = MAML(nn.Sequential(nn.Unflatten(-1, (-1, 1)), tiny(), nn.Flatten(-2)).double(), input_shape=())
    loss = scalar.meta_step((t.support_x[..., 0], t.support_y[..., 0], t.query_x[..., 0], t.query_y[..., 0])).loss
    assert math.isfinite(loss)


def test_targets_of_another_shape_than_the_outputs_are_an_error_not_a_broadcast():
    t = sine_tasks(2, 5, 4)
    learner = MAML(tiny())
    with pytest.raises(ValueError, match=r"targets have shape \[B, 5\] but the model's outputs \[B, 5, 1\]"):
        learner.meta_step(t._replace(support_y=t.support_y[..., 0], query_y=t.query_y[..., 0]))


def test_a_dtype_mismatch_names_the_argument():
    t = sine_tasks(2, 5, 4)
    learner = MAML(tiny().float())
    with pytest.raises(TypeError, match=r"support_x is torch.float64 but the model's parameters are torch.float32"):
        learner.meta_step(t)


def test_l2f_takes_a_maml_config():
    cfg = MAMLConfig(inner_lr=0.02, inner_steps=2, clip_grad=5.0)
    learner = L2F(tiny(), cfg)
    assert isinstance(learner.config, L2FConfig)
    assert learner.config.inner_lr == 0.02 and learner.config.inner_steps == 2 and learner.config.clip_grad == 5.0
    assert learner.config.attenuator_layers == L2FConfig().attenuator_layers
    with pytest.raises(TypeError, match="L2FConfig"):
        L2F(tiny(), {"inner_lr": 0.1})
