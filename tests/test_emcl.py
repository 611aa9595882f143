"""EMCL and La-MAML: the update against a step-by-step computation of the paper's equations,
fused vs reference learners, first vs second order, resume, bad hyperparameters."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fastcl.algorithms import EMCL, EMCL_VARIANTS, EMCLConfig, LaMAML, LaMAMLConfig
from fastcl.algorithms.lamaml import is_plain_mlp, mlp_grads
from fastcl.models import MLP
from fastcl.train import run_stream

from test_learners import _stream


def _emcl(stream, seed=0, **kw):
    torch.manual_seed(seed)
    tc = [t.classes for t in stream] if stream.multi_head else None
    cfg = EMCLConfig(**{"seed": seed, "memory_size": 30, "glances": 2, "alpha0": 0.1, "beta": 0.05, **kw})
    return EMCL(MLP((20, 16, stream.num_classes)), stream.num_classes, (20,), cfg, task_classes=tc)


def _lamaml(stream, seed=0, **kw):
    torch.manual_seed(seed)
    tc = [t.classes for t in stream] if stream.multi_head else None
    cfg = LaMAMLConfig(**{"seed": seed, "memory_size": 30, "glances": 2, "alpha0": 0.05, "eta": 0.05, **kw})
    return LaMAML(MLP((20, 16, stream.num_classes)), stream.num_classes, (20,), cfg, task_classes=tc)


# --------------------------------------------------------------------------- EMCL by hand
def _hand_emcl_batch(theta0, h, alpha, x, y, cfg, model):
    """One EMCL meta-update (no replay, one glance) written out equation by equation."""
    names = [n for n, _ in model.named_parameters()]

    def grad_at(params, xb, yb, reduction="mean"):
        ps = [p.detach().clone().requires_grad_(True) for p in params]
        logits = torch.func.functional_call(model, dict(zip(names, ps)), (xb,))
        return list(torch.autograd.grad(F.cross_entropy(logits, yb, reduction=reduction), ps))

    # Eq. 13: Omega = |g * theta_0| with g the gradient of the meta loss L_t(theta_0, b) at theta_0
    # (Alg. 1, l. 9); L_t a sum over the examples of b (Eq. 1) or, importance_scale="mean", their mean
    g = grad_at(theta0, x, y, cfg.importance_scale)
    omega = [(gi * ti).abs() for gi, ti in zip(g, theta0)]
    if cfg.importance_norm:
        omega = [o / (o.sum() / o.numel() + 1e-12) for o in omega]
    # the h of the inner loop: h, or its mean over all parameters (uniform_importance ablation)
    if cfg.uniform_importance:
        mean = sum(float(hh.sum()) for hh in h) / sum(hh.numel() for hh in h)
        h_in = [torch.full_like(hh, mean) for hh in h]
    else:
        h_in = h
    # inner loop on b: Eq. 16 then the closed-form proximal step of Eq. 21, one example at a time
    theta = [t.clone() for t in theta0]
    for i in range(x.shape[0]):
        gi = grad_at(theta, x[i:i + 1], y[i:i + 1])
        hat = [t - cfg.beta * gg for t, gg in zip(theta, gi)]
        theta = [(th + cfg.gamma * cfg.lam * hh * t0) / (cfg.gamma * cfg.lam * hh + 1)
                 for th, hh, t0 in zip(hat, h_in, theta0)]
    # Eq. 10: meta-gradient lambda * h * (theta_0 - theta_k), applied with alpha^j (Alg. 1, l. 9)
    new_theta0 = [t0 - a * cfg.lam * hh * (t0 - tk) for t0, a, hh, tk in zip(theta0, alpha, h, theta)]
    # Eq. 7: moving average of the importance
    new_h = [cfg.eta * hh + (1 - cfg.eta) * o for hh, o in zip(h, omega)]
    # Eq. 8: the rates for the next step
    if cfg.lr_mode == "paper":
        new_alpha = [a * cfg.r / (hh + cfg.eps) for a, hh in zip(alpha, new_h)]
    elif cfg.lr_mode == "inverse":
        new_alpha = [cfg.alpha0 * cfg.r / (hh + cfg.eps) for hh in new_h]
    else:
        new_alpha = [cfg.alpha0 * torch.clamp(cfg.r / (hh + cfg.eps), max=1.0) for hh in new_h]
    return new_theta0, new_h, new_alpha


@pytest.mark.parametrize("lr_mode", ["stabilised", "paper", "inverse"])
@pytest.mark.parametrize("importance_norm, importance_scale, uniform", [
    (False, "sum", False), (False, "mean", False), (True, "sum", False), (False, "sum", True)])
@pytest.mark.parametrize("reference", [False, True])
def test_emcl_update_matches_the_equations(lr_mode, importance_norm, importance_scale, uniform, reference):
    torch.manual_seed(0)
    model = MLP((5, 4, 3)).double()
    cfg = EMCLConfig(memory_size=0, glances=1, lr_mode=lr_mode, importance_norm=importance_norm,
                     importance_scale=importance_scale, uniform_importance=uniform,
                     reference=reference, r=0.5, eta=0.7, gamma=3.0)  # gamma: a prox that acts
    learner = EMCL(model, 3, (5,), cfg)
    theta0 = [p.detach().clone() for p in learner.params]
    start = [t.clone() for t in theta0]
    h = [torch.zeros_like(p) for p in theta0]
    alpha = [torch.full_like(p, cfg.alpha0) for p in theta0]
    ref_model = MLP((5, 4, 3)).double()
    for step in range(3):  # the first step has h = 0 (no prox, no meta move); later ones do not
        x, y = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
        theta0, h, alpha = _hand_emcl_batch(theta0, h, alpha, x, y, cfg, ref_model)
        learner.observe(x, y, 0)
        for got, want in ((learner.params, theta0), (learner.importance, h), (learner.meta_lrs, alpha)):
            for a, b in zip(got, want):
                torch.testing.assert_close(a.detach(), b, rtol=1e-9, atol=1e-12)
    assert any(float(hh.abs().max()) > 0 for hh in h)
    assert not all(torch.equal(a, b) for a, b in zip(theta0, start))


@pytest.mark.parametrize("reference", [False, True])
def test_default_emcl_is_algorithm_1_on_the_incoming_batch(reference):
    """The default EMCLConfig is Algorithm 1 as written: no image memory, and for every incoming
    batch b (and each of the 5 glances) the inner loop of Eq. 16 + 21 over the single examples of
    b only, Omega of Eq. 13 from the gradient of L_t(theta_0, b) summed over b (Eq. 1), h by Eq. 7,
    the meta step of Eq. 10 with alpha^j, and the next alpha by Eq. 8 (inverse reading); checked
    against the step written out by hand (_hand_emcl_batch) for three batches."""
    cfg = EMCLConfig(reference=reference)
    assert (cfg.memory_size, cfg.importance_scale, cfg.lr_mode, cfg.glances) == (0, "sum", "inverse", 5)
    torch.manual_seed(0)
    model = MLP((5, 4, 3)).double()
    learner = EMCL(model, 3, (5,), cfg)
    assert learner.memory is None
    theta0 = [p.detach().clone() for p in learner.params]
    h = [torch.zeros_like(p) for p in theta0]
    alpha = [torch.full_like(p, cfg.alpha0) for p in theta0]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(10, 5, dtype=torch.float64, generator=gen), torch.randint(0, 3, (10,), generator=gen)
        for _ in range(cfg.glances):
            theta0, h, alpha = _hand_emcl_batch(theta0, h, alpha, x, y, cfg, MLP((5, 4, 3)).double())
        learner.observe(x, y, 0)
    for got, want in ((learner.params, theta0), (learner.importance, h), (learner.meta_lrs, alpha)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a.detach(), b, rtol=1e-9, atol=1e-12)


def test_importance_scale_sum_is_the_batch_size_times_the_mean():
    """Eq. 1 sums the losses: Omega (and so h) under importance_scale="sum" is |b| times the
    mean-loss reading's, where both start from the same theta_0 (the first meta-update)."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))
    hs = {}
    for scale in ("sum", "mean"):
        torch.manual_seed(0)
        learner = EMCL(MLP((5, 4, 3)).double(), 3, (5,), EMCLConfig(glances=1, importance_scale=scale))
        learner.observe(x, y, 0)
        hs[scale] = learner.importance
    for a, b in zip(hs["sum"], hs["mean"]):
        torch.testing.assert_close(a, 10 * b, rtol=1e-12, atol=0)
    assert max(float(a.max()) for a in hs["sum"]) > 0


@pytest.mark.parametrize("reference", [False, True])
def test_default_eq8_cancels_the_importance_of_eq10(reference):
    """Default reading (lr_mode "inverse"): alpha = alpha0*r/h, so the meta step of Eq. 10,
    alpha*lambda*h*(theta_0 - theta_k), is alpha0*r*lambda*h/(h+eps) of the way to theta_k for
    every element (the Reptile / MetaMinibatchProx interpolation), whatever its importance."""
    cfg = EMCLConfig(memory_size=0, glances=1, reference=reference)
    assert (cfg.lr_mode, cfg.importance_norm, cfg.r) == ("inverse", False, 0.01)
    torch.manual_seed(0)
    learner = EMCL(MLP((5, 4, 3)).double(), 3, (5,), cfg)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
    learner.observe(x, y, 0)  # h = 0 before: no meta move, h and alpha set for the next step
    theta0 = [p.detach().clone() for p in learner.params]
    h = [t.clone() for t in learner.importance]
    learner.observe(x, y, 0)
    for new, old, hh, tk in zip(learner.params, theta0, h, learner.fast):
        frac = cfg.alpha0 * cfg.r * cfg.lam * hh / (hh + cfg.eps)
        torch.testing.assert_close(new.detach(), old + frac * (tk.detach() - old), rtol=1e-9, atol=1e-12)
    assert max(float(hh.max()) for hh in h) > 0


def _train(learner, stream):
    """One pass over the stream in batches of 10 (the same batches for every learner)."""
    gen = torch.Generator().manual_seed(0)
    for task in stream:
        for x, y in task.batches(10, gen):
            learner.observe(x, y, task.task_id)
    return learner


#: the pre-v2 reading (capped Eq. 8, importance normalised per tensor, r = 1/(alpha0*lambda))
_V1 = {"lr_mode": "stabilised", "importance_norm": True, "r": 1.0 / 3.0}


# the inner-LR ablation diverges in the default reading (inner rates alpha0*r/h): checked in v1
@pytest.mark.parametrize("variant, reading", [(v, "default") for v in EMCL_VARIANTS if v != "lr"]
                         + [(v, "v1") for v in EMCL_VARIANTS])
@pytest.mark.parametrize("multi_head", [False, True])
def test_fused_and_reference_learners_agree(variant, reading, multi_head):
    s = _stream(num_tasks=2, n=20, multi_head=multi_head)
    runs = []
    kw = _V1 if reading == "v1" else {}
    for reference in (False, True):
        # explicit gradient steps on Eq. 6 are only stable for beta*lambda*h < 2 (hence PGD)
        learner = _emcl(s, variant=variant, reference=reference, **kw, **({"lam": 1.0} if variant == "nopgd" else {}))
        runs.append(_train(learner, s))
    fused, ref = runs
    assert all(bool(torch.isfinite(p).all()) for p in fused.params)
    for a, b in zip(fused.params + fused.importance + fused.meta_lrs, ref.params + ref.importance + ref.meta_lrs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-4, atol=2e-5)  # float32, 12 batches
    assert any(float(h.abs().max()) > 0 for h in fused.importance)


def _count_calls(monkeypatch, names):
    import fastcl.ops as ops

    calls = dict.fromkeys(names, 0)
    for name in names:
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _n=name, _op=op: (calls.__setitem__(_n, calls[_n] + 1), _op(*a))[1])
    return calls


@pytest.mark.parametrize("fused_inner", [True, False])
def test_emcl_inner_loop_runs_on_the_fused_ops(monkeypatch, fused_inner):
    """One mlp_prox_steps_ call per glance on an MLP (the whole inner loop), or one prox_sgd_
    call per inner step with fused_inner=False; one emcl_meta_step_ per glance either way."""
    calls = _count_calls(monkeypatch, ["mlp_prox_steps_", "prox_sgd_", "emcl_meta_step_"])
    s = _stream(num_tasks=1, n=10)
    learner = _emcl(s, glances=3, fused_inner=fused_inner)
    x, y = s[0].x_train[:10], s[0].y_train[:10]
    learner.observe(x, y, 0)  # empty memory: 10 inner steps per glance
    learner.observe(x, y, 0)  # 10 + 10 replayed
    steps = 3 * 10 + 3 * 20
    want = {"mlp_prox_steps_": 6, "prox_sgd_": 0} if fused_inner else {"mlp_prox_steps_": 0, "prox_sgd_": steps}
    assert calls == {**want, "emcl_meta_step_": 6}


@pytest.mark.parametrize("reference", [False, True])
def test_fused_inner_loop_equals_the_per_step_loop(reference):
    """mlp_prox_steps_ (one call per glance) and the per-step loop (by-hand gradients and a
    prox_sgd_ call per example) train the same learner, to float rounding."""
    s = _stream(num_tasks=2, n=20)
    runs = []
    for fused_inner in (True, False):
        learner = _emcl(s, reference=reference, fused_inner=fused_inner, gamma=30.0)  # a prox that acts
        runs.append(_train(learner, s))
    fused, per_step = runs
    assert fused.fused_inner and not per_step.fused_inner
    for a, b in zip(fused.params + fused.importance, per_step.params + per_step.importance):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=2e-4, atol=2e-5)
    assert not all(torch.equal(a, b) for a, b in zip(fused.params, per_step.params))  # two real paths


def test_emcl_and_lamaml_learn():
    """After two tasks, both are far above chance (0.25) on both."""
    s = _stream(num_tasks=2, n=100)
    # EMCL at Table II's alpha_0, beta (meta step alpha0*r*lambda = 0.03 of the way to theta_k),
    # and in the pre-v2 reading at the helper's smaller rates
    for learner in (_emcl(s, alpha0=0.3, beta=0.15), _emcl(s, **_V1), _lamaml(s), _lamaml(s, second_order=False)):
        res = run_stream(learner, s, progress=False)
        assert (res.acc.values[1] > 0.6).all(), (type(learner).__name__, res.acc.values)


# --------------------------------------------------------------------------- La-MAML
class _LinearLossLaMAML(LaMAML):
    """La-MAML on a loss linear in the parameters (minus the true-class logit of a linear model):
    the inner gradients do not depend on the parameters, so second-order terms vanish."""

    def _fast_loss(self, fast, x, y, tasks):
        from fastcl.algorithms.lamaml import functional_forward

        out = functional_forward(self.model, self.param_names, fast, x)
        return -out.gather(1, y[:, None]).mean()


def test_lamaml_first_order_equals_second_order_where_the_hessian_vanishes():
    s = _stream(num_tasks=2, n=30)
    states = []
    for second in (True, False):
        torch.manual_seed(0)
        learner = _LinearLossLaMAML(MLP((20, 4)), 4, (20,), LaMAMLConfig(second_order=second, memory_size=20,
                                                                         glances=2, alpha0=0.05, eta=0.05))
        learner.by_hand = False  # the linear loss only exists on the autograd path
        gen = torch.Generator().manual_seed(0)
        for task in s:
            for x, y in task.batches(10, gen):
                learner.observe(x, y, task.task_id)
        states.append([p.detach().clone() for p in learner.params] + [a.clone() for a in learner.alpha])
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, torch.full_like(a, 0.05)) for a in states[0][2:])  # alpha moved


def test_lamaml_zero_inner_rate_first_equals_second_order():
    s = _stream(num_tasks=1, n=30)
    states = []
    for second in (True, False):
        learner = _lamaml(s, second_order=second, alpha0=0.0)
        for x, y in s[0].batches(10, torch.Generator().manual_seed(0)):
            learner.observe(x, y, 0)
        states.append([p.detach().clone() for p in learner.params])
    for a, b in zip(*states):
        torch.testing.assert_close(a, b)


def test_lamaml_first_order_by_hand_equals_autograd():
    s = _stream(num_tasks=2, n=30, multi_head=True)
    states = []
    for by_hand in (True, False):
        learner = _lamaml(s, second_order=False)
        assert learner.by_hand
        learner.by_hand = by_hand
        gen = torch.Generator().manual_seed(0)
        for task in s:
            for x, y in task.batches(10, gen):
                learner.observe(x, y, task.task_id)
        states.append([p.detach().clone() for p in learner.params] + [a.clone() for a in learner.alpha])
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lamaml_updates_alpha_before_theta(monkeypatch):
    """theta moves with relu of the *updated* rates: a rate driven below zero freezes its weight."""
    s = _stream(num_tasks=1, n=10)
    learner = _lamaml(s, second_order=False, alpha0=0.05, eta=1e6, grad_clip=0.0, glances=1)
    before = [p.detach().clone() for p in learner.params]
    learner.observe(s[0].x_train[:10], s[0].y_train[:10], 0)
    for p, b, a in zip(learner.params, before, learner.alpha):
        frozen = a <= 0
        assert frozen.any()
        assert torch.equal(p.detach()[frozen], b[frozen])


@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), batch=st.integers(1, 5),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def test_mlp_grads_equal_autograd(sizes, batch, masked, seed):
    torch.manual_seed(seed)
    sizes = [sizes[0]] + sizes[1:-1] + [max(2, sizes[-1])]
    model = MLP(sizes).double()
    assert is_plain_mlp(model)
    x = torch.randn(batch, sizes[0], dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (batch,))
    mask = None
    out = model(x)
    if masked:
        mask = torch.rand(batch, sizes[-1]) < 0.5
        mask[torch.arange(batch), y] = True
        out = out.masked_fill(~mask, float("-inf"))
    loss = F.cross_entropy(out, y)
    want = torch.autograd.grad(loss, list(model.parameters()))
    got_loss, got = mlp_grads(model, [p.detach() for p in model.parameters()], x, y, mask)
    torch.testing.assert_close(got_loss, loss.detach())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_plain_mlp_detection():
    assert is_plain_mlp(MLP((4, 3, 2)))
    assert not is_plain_mlp(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)))
    assert not is_plain_mlp(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
    assert not is_plain_mlp(torch.nn.Linear(4, 3))


def test_non_mlp_models_use_autograd():
    """Any nn.Module works (the generic path): a Tanh MLP learns under both learners."""
    s = _stream(num_tasks=1, n=60)
    for cls, cfg in ((EMCL, EMCLConfig(memory_size=20, glances=2, r=0.33)),
                     (LaMAML, LaMAMLConfig(memory_size=20, glances=3, alpha0=0.05, eta=0.05))):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        learner = cls(model, 4, (20,), cfg)
        assert not learner.by_hand
        res = run_stream(learner, s, progress=False)
        assert res.acc.values[0, 0] > 0.8, cls.__name__


# --------------------------------------------------------------------------- state and checks
@pytest.mark.parametrize("make", [_emcl, _lamaml], ids=["emcl", "lamaml"])
@pytest.mark.parametrize("multi_head", [False, True])
def test_resume_gives_identical_metrics(tmp_path, make, multi_head):
    s = _stream(num_tasks=3, n=20, multi_head=multi_head)
    full = run_stream(make(s), s, progress=False, seed=1)
    ck = tmp_path / "ck.pt"
    run_stream(make(s), s, progress=False, seed=1, checkpoint=ck, stop_after=1)
    resumed = run_stream(make(s), s, progress=False, seed=1, checkpoint=ck, resume=True)
    assert (full.acc.values == resumed.acc.values).all()
    assert full.losses == resumed.losses


def test_reservoir_holds_a_sample_of_the_stream():
    s = _stream(num_tasks=3, n=30)
    learner = _emcl(s, memory_size=25)
    run_stream(learner, s, progress=False)
    assert learner.memory.n_seen == 90 and len(learner.memory) == 25
    assert set(learner.memory.tasks.tolist()) <= {0, 1, 2}
    no_memory = _emcl(s, memory_size=0)
    run_stream(no_memory, s, progress=False)
    assert no_memory.memory is None


@pytest.mark.parametrize("cfg_cls, kwargs, match", [
    (EMCLConfig, {"beta": -0.1}, "beta"),
    (EMCLConfig, {"alpha0": -1.0}, "alpha0"),
    (EMCLConfig, {"lam": -1.0}, "lam"),
    (EMCLConfig, {"gamma": float("nan")}, "gamma"),
    (EMCLConfig, {"r": float("inf")}, "r must"),
    (EMCLConfig, {"eta": 1.5}, "eta"),
    (EMCLConfig, {"lr_mode": "fast"}, "lr_mode"),
    (EMCLConfig, {"variant": "maml"}, "variant"),
    (EMCLConfig, {"importance_scale": "max"}, "importance_scale"),
    (EMCLConfig, {"glances": 0}, "glances"),
    (EMCLConfig, {"memory_size": -1}, "memory_size"),
    (EMCLConfig, {"replay_batch": -1}, "replay_batch"),
    (LaMAMLConfig, {"alpha0": -0.3}, "alpha0"),
    (LaMAMLConfig, {"eta": -1.0}, "eta"),
    (LaMAMLConfig, {"grad_clip": -2.0}, "grad_clip"),
])
def test_bad_hyperparameters(cfg_cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cfg_cls(**kwargs)


def test_bad_input_is_rejected_before_any_update():
    s = _stream(num_tasks=1, n=10)
    learner = _emcl(s)
    before = [p.detach().clone() for p in learner.params]
    with pytest.raises(ValueError, match="y must"):
        learner.observe(s[0].x_train[:10], torch.full((10,), 7), 0)
    with pytest.raises(ValueError, match="x has shape"):
        learner.observe(torch.randn(10, 3), s[0].y_train[:10], 0)
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, learner.params))
    assert learner.memory.n_seen == 0 and not math.isnan(float(learner.params[0].detach().sum()))


def test_bench_emcl_runs(capsys):
    from fastcl import cli

    assert cli.main(["bench", "emcl", "--batches", "1", "--warmup", "21", "--repeats", "1", "--glances", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("EMCL fused", "EMCL reference", "La-MAML first order", "La-MAML second order"):
        assert f"| {name} |" in out
    from fastcl.benchmarks.meta_learners import COMPILED, INNER_LOOPS

    assert "EMCL inner loop alone" in out
    for name in INNER_LOOPS:  # each checked against the fused op before it is timed
        assert (f"| {name} |" in out) == (name != COMPILED)  # torch.compile only with --compile


@pytest.mark.parametrize("cls, cfg", [(EMCL, EMCLConfig), (LaMAML, LaMAMLConfig)])
def test_split_cifar100_multi_head_with_the_reduced_resnet(tmp_path, cls, cfg):
    """The issue's third stream: multi-head Split CIFAR-100 with the reduced ResNet-18, from
    CIFAR-100 python files (a generated fixture). Not an MLP: EMCL takes autograd gradients and a
    prox_sgd_ step per example; predictions stay inside each task's head."""
    from dataclasses import replace

    from fastcl.data.streams import split_cifar100
    from fastcl.models import ReducedResNet18
    from test_data import _write_cifar100

    _write_cifar100(tmp_path, n_train=100, n_test=100)
    stream = split_cifar100(tmp_path)
    stream = replace(stream, tasks=stream.tasks[:2])
    torch.manual_seed(0)
    learner = cls(ReducedResNet18(100, nf=4), 100, (3, 32, 32),
                  cfg(memory_size=10, glances=1, seed=0), task_classes=[t.classes for t in stream])
    assert getattr(learner, "fused_inner", False) is False
    before = [p.detach().clone() for p in learner.params]
    acc = torch.as_tensor(run_stream(learner, stream, progress=False).acc.values)
    assert acc.shape == (2, 2) and bool(torch.isfinite(acc).all())
    assert not all(torch.equal(a, p.detach()) for a, p in zip(before, learner.params))
    for task in stream:  # logits outside the task's head are masked
        pred = learner.predict(task.x_test[:8], task.task_id).argmax(1)
        assert set(pred.tolist()) <= set(task.classes)


@pytest.mark.parametrize("stream_name, paper", [
    ("permuted-mnist", {"alpha0": 0.3, "beta": 0.15, "gamma": 0.3, "r": 0.01, "memory": 200}),
    ("many-permutations", {"alpha0": 0.15, "beta": 0.03, "gamma": 0.1, "r": 0.02, "memory": 500})])
def test_ablations_and_replay_are_variants_of_the_default_emcl(stream_name, paper):
    """`fastcl run emcl` is Algorithm 1 (no memory, Table II's column of the stream); the Table IV /
    Fig. 3 ablations differ from it in `variant` alone, and emcl-replay in the memory alone."""
    from dataclasses import asdict, replace

    from fastcl.experiments import LEARNERS

    s = replace(_stream(num_tasks=1, n=10), name=stream_name)
    cfgs = {}
    for name in ("emcl", "emcl-replay", "emcl-nopgd", "emcl-lr", "emcl-si"):
        make, _ = LEARNERS[name]
        cfgs[name] = asdict(make(MLP((20, 4)), s, 1, {"seed": 0}).config)
    base = cfgs["emcl"]
    assert base["memory_size"] == 0 and base["variant"] == "emcl"
    table_ii = ("alpha0", "beta", "gamma", "r")
    assert {k: base[k] for k in table_ii} == {k: paper[k] for k in table_ii}
    assert (base["lr_mode"], base["importance_scale"], base["importance_norm"]) == ("inverse", "sum", False)
    assert cfgs["emcl-replay"] == {**base, "memory_size": paper["memory"]}
    for variant in ("nopgd", "lr", "si"):
        assert cfgs[f"emcl-{variant}"] == {**base, "variant": variant}
