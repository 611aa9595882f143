import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fastcl.algorithms import CTS, CTSAccurate, CTSConfig, Reptile
from fastcl.algorithms.cts import approximation_error, shard
from fastcl.data.cts_tasks import C0, C2, ROUNDED_COEFFS, synthetic2d, synthetic2d_loss

T, D, H = 3, 4, 5


def _mlp_params(seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return {"w1": torch.randn(H, D, generator=g, dtype=torch.float64) * 0.5,
            "b1": torch.zeros(H, dtype=torch.float64),
            "head": torch.randn(classes, H, generator=g, dtype=torch.float64) * 0.5}


def _mlp_loss(p, batch):
    x, y = batch
    return F.cross_entropy(torch.tanh(x @ p["w1"].T + p["b1"]) @ p["head"].T, y)


def _batch_fn(m, k, tasks):
    """Pure in (m, k, task): task t's batch of step (m, k)."""
    xs, ys = [], []
    for t in tasks.tolist():
        g = torch.Generator().manual_seed(1000 * m + 10 * k + t)
        xs.append(torch.randn(6, D, generator=g, dtype=torch.float64))
        ys.append(torch.randint(3, (6,), generator=g))
    return torch.stack(xs), torch.stack(ys)


def _cfg(**kw):
    base = dict(inner_lr=0.1, meta_lr=0.3, inner_steps=3, repetitions=2, optimizer="momentum", momentum=0.9)
    base.update(kw)
    return CTSConfig(**base)


@pytest.mark.parametrize("reset", [True, False])
def test_cts_steps_equal_algorithm_2_written_out(reset):
    cfg = _cfg(reset_optimizer=reset)
    learner = CTS(_mlp_params(), _mlp_loss, T, cfg, heads=["head"])
    for _ in range(5):  # crosses a repetition boundary (K = 3)
        learner.step(_batch_fn)
    # Algorithm 2 by hand: a loop over tasks with torch.autograd.grad and momentum buffers
    phi = {n: p.clone() for n, p in _mlp_params().items() if n != "head"}
    theta = [{n: p.clone() for n, p in _mlp_params().items()} for _ in range(T)]
    buf = [None] * T
    step = 0
    for m in range(cfg.repetitions):
        for t in range(T):
            theta[t].update({n: phi[n].clone() for n in phi})
        if reset:  # the authors' synthetic code: new inner optimizers at every repetition
            buf = [None] * T
        for k in range(1, cfg.inner_steps + 1):
            if step == 5:
                break
            step += 1
            x, y = _batch_fn(m, k, torch.arange(T))
            for t in range(T):
                ps = {n: v.clone().requires_grad_(True) for n, v in theta[t].items()}
                gs = torch.autograd.grad(_mlp_loss(ps, (x[t], y[t])), list(ps.values()))
                gs = dict(zip(ps, gs))
                buf[t] = dict(gs) if buf[t] is None else {n: 0.9 * buf[t][n] + gs[n] for n in gs}
                theta[t] = {n: theta[t][n] - 0.1 * buf[t][n] for n in gs}
            delta = {n: 0.3 * (sum(theta[t][n] for t in range(T)) / T - phi[n]) for n in phi}
            phi = {n: phi[n] + delta[n] for n in phi}
            for t in range(T):
                for n in phi:
                    theta[t][n] = theta[t][n] + delta[n]
    for n in phi:
        torch.testing.assert_close(learner.phi[n], phi[n])
    for n in learner.names:
        torch.testing.assert_close(learner.theta[n], torch.stack([theta[t][n] for t in range(T)]))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_meta_lr_zero_is_independent_task_training(optimizer):
    cfg = _cfg(meta_lr=0.0, optimizer=optimizer, inner_steps=4, repetitions=1, weight_decay=0.01)
    learner = CTS(_mlp_params(), _mlp_loss, T, cfg)
    learner.run(_batch_fn)
    for t in range(T):
        params = {n: torch.nn.Parameter(p.clone()) for n, p in _mlp_params().items()}
        if optimizer == "adam":
            opt = torch.optim.Adam(params.values(), lr=0.1, weight_decay=0.01)
        else:
            opt = torch.optim.SGD(params.values(), lr=0.1, momentum=0.9 if optimizer == "momentum" else 0.0,
                                  weight_decay=0.01)
        for k in range(1, 5):
            x, y = _batch_fn(0, k, torch.tensor([t]))
            opt.zero_grad()
            _mlp_loss(params, (x[0], y[0])).backward()
            opt.step()
        for n, p in params.items():
            torch.testing.assert_close(learner.theta[n][t], p.detach())
    for n, p in _mlp_params().items():  # phi never moved
        torch.testing.assert_close(learner.phi[n], p)


def test_reptile_equals_cts_when_k_is_1():
    cfg = _cfg(inner_steps=1, repetitions=4)
    a = Reptile(_mlp_params(), _mlp_loss, T, cfg, heads=["head"])
    b = CTS(_mlp_params(), _mlp_loss, T, cfg, heads=["head"])
    a.run(_batch_fn)
    b.run(_batch_fn)
    assert a.meta_steps == b.meta_steps == 4
    for n in a.phi:
        torch.testing.assert_close(a.phi[n], b.phi[n])
    torch.testing.assert_close(a.theta["head"], b.theta["head"])


def test_reptile_meta_step_once_per_repetition_and_moves_phi():
    cfg = _cfg(inner_steps=3, repetitions=2, meta_lr=1.0, optimizer="sgd")
    a = Reptile(_mlp_params(), _mlp_loss, T, cfg)
    a.step(_batch_fn)
    for n, p in _mlp_params().items():  # no meta step before step K
        torch.testing.assert_close(a.phi[n], p)
    a.step(_batch_fn), a.step(_batch_fn)
    # beta = 1: phi is the task average of theta_K
    for n in a.phi:
        torch.testing.assert_close(a.phi[n], a.theta[n].mean(0))
    assert a.meta_steps == 1


def test_noshift_and_shift_differ_only_by_the_shift():
    cfg = _cfg()
    a = CTS(_mlp_params(), _mlp_loss, T, cfg)
    b = CTS(_mlp_params(), _mlp_loss, T, _cfg(shift=False))
    a.step(_batch_fn), b.step(_batch_fn)
    for n in a.phi:  # same first meta step
        torch.testing.assert_close(a.phi[n], b.phi[n])
        torch.testing.assert_close(a.theta[n] - b.theta[n], (a.phi[n] - _mlp_params()[n]).expand_as(a.theta[n]))


def test_cts_accurate_uses_the_exact_trajectory():
    """CTS-Accurate's k-th meta step is Reptile's (beta) from U_k(current phi)."""
    cfg = _cfg(optimizer="sgd", inner_steps=3, repetitions=1)
    acc = CTSAccurate(_mlp_params(), _mlp_loss, T, cfg)
    acc.step(_batch_fn), acc.step(_batch_fn)
    phi1 = {n: acc.phi[n].clone() for n in acc.phi}
    # the third meta step: U_3(phi1) by hand with a fresh Reptile of K = 3 from phi1
    ref = Reptile({**_mlp_params(), **phi1}, _mlp_loss, T, _cfg(optimizer="sgd", inner_steps=3, repetitions=1))
    ref.run(_batch_fn)
    acc.step(_batch_fn)
    assert acc.inner_steps_done == 1 + 2 + 3
    for n in acc.phi:
        torch.testing.assert_close(acc.phi[n], ref.phi[n])


@settings(max_examples=20)
@given(alpha=st.floats(0.001, 0.5), beta=st.floats(0.001, 2.0), k=st.integers(1, 6), seed=st.integers(0, 100))
def test_approximation_error_is_zero_for_a_linear_loss(alpha, beta, k, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(3, dtype=torch.float64, generator=g)
    phi = {"w": torch.randn(3, dtype=torch.float64, generator=g)}
    deltas = [{"w": beta * torch.randn(3, dtype=torch.float64, generator=g)} for _ in range(k - 1)]
    loss = lambda p, b: (b * p["w"]).sum()  # constant gradient b
    batches = [c * (i + 1) for i in range(k)]
    assert approximation_error(loss, phi, batches, alpha, deltas) < 1e-12 * (1 + phi["w"].abs().sum() + k * beta)


def _quad_error(alpha, beta, k, draws=4):
    A = torch.diag(torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64))
    loss = lambda p, b: 0.5 * p["w"] @ (A @ p["w"]) + b @ p["w"]
    errs = []
    for d in range(draws):
        g = torch.Generator().manual_seed(d)
        phi = {"w": torch.randn(3, dtype=torch.float64, generator=g)}
        deltas = []
        for _ in range(k - 1):
            x = torch.randn(3, dtype=torch.float64, generator=g)
            deltas.append({"w": beta * x / x.norm()})  # ||Delta|| = beta, random direction (supp. C.4)
        batches = [torch.randn(3, dtype=torch.float64, generator=g) for _ in range(k)]
        errs.append(approximation_error(loss, phi, batches, alpha, deltas))
    return sum(errs) / draws


def test_approximation_error_grows_with_alpha_beta_and_k_on_a_quadratic():
    base = _quad_error(0.05, 0.1, 10)
    assert base > 1e-6
    assert _quad_error(0.01, 0.1, 10) < base < _quad_error(0.2, 0.1, 10)
    assert _quad_error(0.05, 0.01, 10) < base < _quad_error(0.05, 1.0, 10)
    assert _quad_error(0.05, 0.1, 3) < base < _quad_error(0.05, 0.1, 30)
    assert _quad_error(0.05, 0.1, 1) == 0.0


@pytest.mark.parametrize("cls", [CTS, Reptile, CTSAccurate])
def test_checkpoint_resume_is_identical(cls):
    cfg = _cfg(optimizer="adam", inner_steps=3, repetitions=2)
    full = cls(_mlp_params(), _mlp_loss, T, cfg, heads=["head"])
    full.run(_batch_fn)
    part = cls(_mlp_params(), _mlp_loss, T, cfg, heads=["head"])
    for _ in range(4):
        part.step(_batch_fn)
    state = part.state_dict()
    part.step(_batch_fn)  # moves on; the restore must not share memory with it
    resumed = cls(_mlp_params(seed=5), _mlp_loss, T, cfg, heads=["head"])
    resumed.load_state_dict(state)
    resumed.run(_batch_fn)
    assert resumed.meta_steps == full.meta_steps and resumed.inner_steps_done == full.inner_steps_done
    for n in full.names:
        assert torch.equal(resumed.theta[n], full.theta[n])
    for n in full.phi:
        assert torch.equal(resumed.phi[n], full.phi[n])


def test_load_state_dict_rejects_another_kind():
    a = CTS(_mlp_params(), _mlp_loss, T, _cfg())
    with pytest.raises(ValueError, match="reptile"):
        a.load_state_dict(Reptile(_mlp_params(), _mlp_loss, T, _cfg()).state_dict())


@pytest.mark.parametrize("kw, match", [
    (dict(inner_lr=-1.0), "inner_lr"), (dict(meta_lr=float("nan")), "meta_lr"), (dict(inner_steps=0), "inner_steps"),
    (dict(repetitions=1.5), "repetitions"), (dict(optimizer="rmsprop"), "optimizer"), (dict(momentum=1.0), "momentum"),
    (dict(betas=(0.9, 1.0)), "betas"),
])
def test_config_errors_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        CTSConfig(**kw)


def test_learner_argument_errors():
    with pytest.raises(ValueError, match="head 'nope'"):
        CTS(_mlp_params(), _mlp_loss, T, _cfg(), heads=["nope"])
    with pytest.raises(ValueError, match="num_tasks"):
        CTS(_mlp_params(), _mlp_loss, 0, _cfg())
    with pytest.raises(TypeError, match="params"):
        CTS([torch.zeros(2)], _mlp_loss, T, _cfg())
    done = CTS(_mlp_params(), _mlp_loss, T, _cfg(inner_steps=1, repetitions=1))
    done.run(_batch_fn)
    with pytest.raises(RuntimeError, match="over"):
        done.step(_batch_fn)


@given(n=st.integers(1, 50), world=st.integers(1, 8))
def test_shard_partitions_the_tasks(n, world):
    if n < world:
        with pytest.raises(ValueError, match="num_tasks"):
            shard(n, 0, world)
        return
    parts = [list(shard(n, r, world)) for r in range(world)]
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_synthetic2d_family():
    fam = synthetic2d(8, seed=3)
    assert torch.allclose(fam.targets.mean(0), torch.tensor([5.0, 5.0], dtype=torch.float64))
    assert torch.allclose((fam.targets - 5).norm(dim=1), torch.full((8,), 7.0, dtype=torch.float64))
    for t in range(8):
        a = fam.angles[t]
        c, s = torch.cos(a), torch.sin(a)
        rot_t = torch.stack([torch.stack([c, s]), torch.stack([-s, c])])  # R(angle)^T
        # the scaled form's minimum u = (3, 2) sits at target + 3 R^T (3, 2)
        xmin = fam.targets[t] + 3 * rot_t @ torch.tensor([3.0, 2.0], dtype=torch.float64)
        assert synthetic2d_loss(xmin, a, fam.targets[t]) < 1e-20
        assert fam.task_losses(xmin)[t] < 1e-20
        # the printed form's minimum sits at target + R^T (3, 2)
        xp = fam.targets[t] + rot_t @ torch.tensor([3.0, 2.0], dtype=torch.float64)
        assert synthetic2d_loss(xp, a, fam.targets[t], "printed") < 1e-20
    # at the target (u = 0) the scaled form is c0 * 121 + c2 * 49
    assert synthetic2d_loss(fam.targets[0], fam.angles[0], fam.targets[0]).item() == pytest.approx(C0 * 121 + C2 * 49)
    with pytest.raises(ValueError, match="form"):
        synthetic2d(8, form="nope")


def test_cts_lowers_the_synthetic_meta_test_loss():
    """phi of CTS adapts better (Adam meta-test) than the start point."""
    from fastcl.data.cts_tasks import adapt_points

    fam = synthetic2d(8, seed=0)
    x0 = torch.tensor([-5.0, 5.0], dtype=torch.float64)
    cts = CTS({"x": x0}, fam.loss, 8, CTSConfig(inner_steps=20, repetitions=2))
    cts.run(fam.batch_fn)
    before = adapt_points(fam, x0[None], 30, "adam").item()
    after = adapt_points(fam, cts.phi["x"][None], 30, "adam").item()
    assert after < 0.8 * before


def test_benchmark_baseline_is_the_same_algorithm():
    """The benchmark's T nn.Module copies + torch.optim.SGD + per-tensor shift agree with CTS
    (end_to_end checks it before timing)."""
    from fastcl.benchmarks.cts import end_to_end

    r = end_to_end(num_tasks=3, steps=1, repeats=1, sizes=(6, 5, 3), batch=4)
    assert r["fastcl_s"] > 0 and r["modules_s"] > 0


def test_synthetic2d_uses_the_authors_exact_coefficients():
    """c0, c2 are coeff[0], coeff[2] of the authors' synthetic/env.npz (0.7384512..., 0.9954126...),
    not the rounded 0.738 / 0.995; ``coeffs`` sets them."""
    assert C0 == pytest.approx(0.7384512135, abs=1e-10) and C2 == pytest.approx(0.9954126046, abs=1e-10)
    fam = synthetic2d(8, seed=0)
    assert fam.coeffs == (C0, C2)
    # hand-computed first SGD step from a target with angle 0: u = 0, so
    # df/du = (2 c2 (0 + 0 - 7), 2 c0 (0 + 0 - 11)) = (-14 c2, -22 c0), df/dx = df/du / 3
    target = torch.tensor([5.0, 12.0], dtype=torch.float64)
    for c in [(C0, C2), ROUNDED_COEFFS, (2.0, 3.0)]:
        x = target.clone().requires_grad_(True)
        f = synthetic2d_loss(x, torch.tensor(0.0, dtype=torch.float64), target, coeffs=c)
        assert f.item() == pytest.approx(121 * c[0] + 49 * c[1], rel=1e-14)
        (g,) = torch.autograd.grad(f, [x])
        step = target - 0.05 * g
        expect = target + 0.05 * torch.tensor([14 * c[1] / 3, 22 * c[0] / 3], dtype=torch.float64)
        assert torch.allclose(step, expect, rtol=0, atol=1e-13)
    rounded = synthetic2d(8, seed=0, coeffs=ROUNDED_COEFFS)
    x = torch.tensor([[-5.0, -5.0]], dtype=torch.float64)
    assert not torch.allclose(rounded.task_losses(x), fam.task_losses(x))
    for bad in [(0.7,), (0.7, float("nan")), (0.7, -1.0), "ab"]:
        with pytest.raises(ValueError, match="coeffs"):
            synthetic2d(8, coeffs=bad)


@pytest.mark.parametrize("cls", [Reptile, CTS, CTSAccurate])
def test_optimizer_reset_between_repetitions(cls):
    """Default (the authors' synthetic code): new inner optimizers at every repetition.
    Hand-computed with one task, L(x) = (x - 1)^2 / 2, phi0 = 0, K = 1, alpha 0.1, mu 0.9, beta 1:
    repetition 1: g = -1, b = -1, theta = 0.1, phi = 0.1; repetition 2 from 0.1: g = -0.9 and
    with the reset b = -0.9, theta = phi = 0.19; without it b = 0.9 (-1) - 0.9 = -1.8, 0.28."""
    loss = lambda p, b: 0.5 * (p["x"] - 1.0).pow(2).sum()
    batch_fn = lambda m, k, tasks: torch.zeros(len(tasks))
    base = dict(inner_lr=0.1, meta_lr=1.0, inner_steps=1, repetitions=2, optimizer="momentum", momentum=0.9)
    assert CTSConfig().reset_optimizer is True
    for reset, expect in [(True, 0.19), (False, 0.28)]:
        x0 = {"x": torch.zeros(1, dtype=torch.float64)}
        learner = cls(x0, loss, 1, CTSConfig(**base, reset_optimizer=reset))
        learner.run(batch_fn)
        assert learner.phi["x"].item() == pytest.approx(expect, abs=1e-14)


def test_authors_angles_reproduce_the_reptile_divergence_of_the_rounded_constants():
    """With the rotations of the authors' env.npz, Reptile's first inner loop from (-5, -5)
    diverges under the rounded 0.738 / 0.995 and stays finite under the exact constants."""
    from fastcl.data.cts_tasks import AUTHORS_ANGLES

    for coeffs, finite in [((C0, C2), True), (ROUNDED_COEFFS, False)]:
        fam = synthetic2d(8, coeffs=coeffs, angles=AUTHORS_ANGLES)
        assert torch.equal(fam.angles, torch.tensor(AUTHORS_ANGLES, dtype=torch.float64))
        r = Reptile({"x": torch.tensor([-5.0, -5.0], dtype=torch.float64)}, fam.loss, 8, CTSConfig(repetitions=1))
        r.run(fam.batch_fn)
        assert bool(torch.isfinite(r.phi["x"]).all()) is finite
    with pytest.raises(ValueError, match="angles"):
        synthetic2d(4, angles=AUTHORS_ANGLES)


def test_batch_fn_without_the_task_dimension_is_an_error_naming_it():
    """batch_fn(m, k, tasks) returns tensors stacked over the task learners; one task's batch alone
    (or anything with another leading size) is refused before any step, naming batch_fn."""
    learner = CTS(_mlp_params(), _mlp_loss, T, _cfg())
    before = {n: t.clone() for n, t in learner.theta.items()}

    def one_task(m, k, tasks):
        x, y = _batch_fn(m, k, tasks)
        return x[0], y[0]

    with pytest.raises(ValueError, match=rf"batch_fn\(m, k, tasks\) must return tensors stacked over the {T} task"):
        learner.step(one_task)
    with pytest.raises(ValueError, match="batch_fn"):
        learner.step(lambda m, k, tasks: None)
    assert all(torch.equal(before[n], learner.theta[n]) for n in before)


def test_reptile_is_cts_without_the_shift_at_every_step_of_k_1_and_differs_otherwise():
    """Reptile (Alg. 1) and CTSConfig(shift=False) share the meta step formula; with K = 1 both make
    one meta step per repetition from the same trajectory, so they agree exactly."""
    cfg = _cfg(inner_steps=1, repetitions=3, shift=False)
    a = Reptile(_mlp_params(), _mlp_loss, T, cfg)
    b = CTS(_mlp_params(), _mlp_loss, T, cfg)
    a.run(_batch_fn), b.run(_batch_fn)
    for n in a.phi:
        torch.testing.assert_close(a.phi[n], b.phi[n], rtol=0, atol=0)
    # K = 3: the no-shift ablation meta-steps after every inner step, Reptile once per repetition
    cfg = _cfg(inner_steps=3, repetitions=1, shift=False)
    a, b = Reptile(_mlp_params(), _mlp_loss, T, cfg), CTS(_mlp_params(), _mlp_loss, T, cfg)
    a.run(_batch_fn), b.run(_batch_fn)
    assert (a.meta_steps, b.meta_steps) == (1, 3)
    assert not all(torch.equal(a.phi[n], b.phi[n]) for n in a.phi)
