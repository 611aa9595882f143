import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastcl.algorithms import ERConfig, ERRing, HAL, HALConfig
from fastcl.models import MLP
from fastcl.train import run_stream

from test_learners import _stream


def _hal(stream, **kw):
    torch.manual_seed(0)
    kw = {"k": 5, "finetune_steps": 3, **kw}
    cfg = HALConfig(lr=0.05, per_class=2, num_tasks=len(stream), **kw)
    tc = [t.classes for t in stream] if stream.multi_head else None
    return HAL(MLP((20, 16, stream.num_classes)), stream.num_classes, (20,), cfg, task_classes=tc)


def test_lambda_zero_is_er_ring():
    s = _stream()
    torch.manual_seed(0)
    er = ERRing(MLP((20, 16, 4)), 4, (20,), ERConfig(lr=0.05, per_class=2, num_tasks=3))
    hal = _hal(s, lam=0.0)
    r1 = run_stream(er, s, progress=False)
    r2 = run_stream(hal, s, progress=False)
    for a, b in zip(er.model.parameters(), hal.model.parameters()):
        assert torch.equal(a, b)
    assert (r1.acc.values == r2.acc.values).all()




def test_exact_anchoring_gradient_matches_autograd():
    """One HAL step equals theta - a*grad(l(B u BM) + lam*mean((f_theta(e) - f_theta~(e))^2)),
    with theta~ = theta - a*grad l built with plain autograd (second order), and the
    first-order option equals the same with grad l detached."""
    s = _stream()
    for first_order in (False, True):
        hal = _hal(s, lam=0.5, first_order=first_order, anchors_per_step=100)
        hal.model.double()
        hal.params = [p for p in hal.model.parameters()]
        hal.anchor_x = hal.anchor_x.double()
        hal.class_sum = hal.class_sum.double()
        hal.memory = type(hal.memory)(3, 4, 2, (20,), dtype=torch.float64)
        t0 = s[0]
        for i in range(0, 40, 10):
            hal.observe(t0.x_train[i:i + 10].double(), t0.y_train[i:i + 10], 0)
        hal.end_task(0)
        x, y = s[1].x_train[:10].double(), s[1].y_train[:10]
        # replay batch and anchors the step will use (same generator states)
        g_state, a_state = hal.generator.get_state(), hal.anchor_generator.get_state()
        mx, my, _ = hal.replay(1)
        e, _ = hal._anchor_batch(1)
        hal.generator.set_state(g_state)
        hal.anchor_generator.set_state(a_state)
        names = [n for n, _ in hal.model.named_parameters()]
        theta = [p.detach().clone().requires_grad_(True) for p in hal.params]
        f = lambda ps, inp: functional_call(hal.model, dict(zip(names, ps)), (inp,))
        loss = F.cross_entropy(f(theta, torch.cat([x, mx])), torch.cat([y, my]))
        g = torch.autograd.grad(loss, theta, create_graph=True)
        if first_order:
            g = [gi.detach() for gi in g]
        tilde = [p - hal.config.lr * gi for p, gi in zip(theta, g)]
        total = loss + 0.5 * (f(theta, e) - f(tilde, e)).pow(2).mean()
        grads = torch.autograd.grad(total, theta)
        expected = [p - hal.config.lr * gi for p, gi in zip(theta, grads)]
        hal.observe(x, y, 1)
        for p, q in zip(hal.params, expected):
            torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_exact():
    s = _stream()
    params = []
    for fo in (False, True):
        hal = _hal(s, lam=1.0, first_order=fo)
        run_stream(hal, s, progress=False)
        params.append(torch.cat([p.detach().flatten() for p in hal.params]))
    assert not torch.allclose(params[0], params[1])


@pytest.mark.parametrize("kind", ["hindsight", "random", "data"])
def test_anchors_one_per_class_in_range(kind):
    s = _stream()
    hal = _hal(s, anchors=kind, input_range=(-1.0, 2.0))
    run_stream(hal, s, progress=False)
    assert int(hal.anchor_mask.sum()) == 3 * 4
    e = hal.anchor_x[hal.anchor_mask]
    assert torch.isfinite(e).all()
    if kind == "data":  # a stored example of its class and task (the toy data is not in range)
        for t in range(3):
            for c in range(4):
                a = hal.anchor_x[t * 4 + c]
                match = (s[t].x_train == a).all(1) & (s[t].y_train == c)
                assert bool(match.any())
    else:
        assert e.min() >= -1.0 and e.max() <= 2.0


def test_hindsight_anchors_raise_the_forgetting_objective():
    """Eq. 9's ascent: the learned anchors score higher than their initialisation."""
    s = _stream()
    hal = _hal(s, k=50, anchor_lr=1e-2, gamma=0.0, input_range=(-10.0, 10.0))
    for t in range(2):
        for x, y in s[t].batches(10, torch.Generator().manual_seed(t)):
            hal.observe(x, y, t)
        if t == 0:
            hal.end_task(0)
    labels = list(range(4))
    init = hal._initial_anchors(1, labels)
    g_state = hal.anchor_generator.get_state()
    theta_m = hal._finetuned_params(1)
    hal.anchor_generator.set_state(g_state)
    learned = hal.build_anchors(1)
    y = torch.tensor(labels)

    def objective(e):
        with torch.no_grad():
            out_m = functional_call(hal.model, theta_m, (e,))
            return float(F.cross_entropy(out_m, y, reduction="sum") - F.cross_entropy(hal.model(e), y, reduction="sum"))

    assert objective(learned) > objective(init)


def test_hal_resume_is_exact(tmp_path):
    s = _stream(multi_head=True)
    full = run_stream(_hal(s), s, progress=False, seed=2)
    ck = tmp_path / "hal.pt"
    run_stream(_hal(s), s, progress=False, seed=2, checkpoint=ck, stop_after=2)
    resumed = run_stream(_hal(s), s, progress=False, seed=2, checkpoint=ck, resume=True)
    assert (full.acc.values == resumed.acc.values).all()


@pytest.mark.parametrize("kw, match", [
    (dict(lam=-1.0), "lam"), (dict(gamma=-0.1), "gamma"), (dict(beta=1.5), "beta"),
    (dict(k=-1), "k"), (dict(anchors="best"), "anchors"), (dict(input_range=(1.0, 0.0)), "input_range"),
    (dict(anchor_reduction="max"), "anchor_reduction"), (dict(anchor_procedure="authors"), "anchor_procedure"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        HALConfig(**kw)


def test_model_without_feature_extractor():
    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(20, 4)

        def forward(self, x):
            return self.w(x)

    with pytest.raises(TypeError, match="feature extractor"):
        HAL(Bare(), 4, (20,), HALConfig(num_tasks=2))


def _two_tasks(hal, s):
    for t in range(2):
        for x, y in s[t].batches(10, torch.Generator().manual_seed(t)):
            hal.observe(x, y, t)
        if t == 0:
            hal.end_task(0)


def test_paper_anchor_procedure_is_the_papers_text():
    """``anchor_procedure="paper"``: e_t <- rand() (GetAnchors l. 7, uniform in the input range),
    theta_M after ONE epoch of SGD on the memory of previous tasks (every stored example once,
    shuffled, batches of replay_batch), then Eq. 9 as plain ascent e <- e + alpha * grad
    (alpha = lr, no clamp), written out here for k = 1."""
    s = _stream()
    hal = _hal(s, anchor_procedure="paper", k=1, gamma=0.3, finetune_steps=1000, replay_batch=3)
    _two_tasks(hal, s)
    labels = list(range(4))
    y = torch.tensor(labels)
    g0 = hal.anchor_generator.get_state()
    e0 = hal._initial_anchors(1, labels)
    lo, hi = hal.config.input_range
    assert e0.min() >= lo and e0.max() <= hi
    means = hal.class_sum[y] / hal.class_count[y].clamp(min=1).view(-1, 1)
    assert not torch.allclose(e0, means.clamp(lo, hi))
    # theta_M: one epoch over the 4 classes x 2 slots of task 0 (8 examples, batches 3, 3, 2)
    mx, my, mt = hal._stored(1)
    assert len(my) == 8 and (mt == 0).all()
    order = torch.randperm(8, generator=hal.anchor_generator)
    names = [n for n, _ in hal.model.named_parameters()]
    theta_m = [p.detach().clone() for p in hal.params]
    steps = 0
    for i in range(0, 8, 3):
        idx = order[i:i + 3]
        ps = [p.clone().requires_grad_(True) for p in theta_m]
        out = hal.mask_logits(functional_call(hal.model, dict(zip(names, ps)), (mx[idx],)), mt[idx])
        grads = torch.autograd.grad(F.cross_entropy(out, my[idx]), ps)
        theta_m = [p - hal.config.lr * g for p, g in zip(theta_m, grads)]
        steps += 1
    assert steps == 3  # one epoch, not finetune_steps
    e = e0.clone().requires_grad_(True)
    out_m = hal.mask_logits(functional_call(hal.model, dict(zip(names, theta_m)), (e,)), 1)
    emb = hal.features(e)
    objective = (F.cross_entropy(out_m, y, reduction="sum")
                 - F.cross_entropy(hal.mask_logits(hal.head(emb), 1), y, reduction="sum")
                 - 0.3 * (emb - hal.phi_t).pow(2).sum())
    (g,) = torch.autograd.grad(objective, e)
    expect = e0 + hal.config.lr * g
    hal.anchor_generator.set_state(g0)
    learned = hal.build_anchors(1)
    torch.testing.assert_close(learned, expect, rtol=1e-5, atol=1e-6)


def test_code_anchor_procedure_is_the_default():
    """The authors' code: class-mean start, Adam steps clamped to the input range."""
    s = _stream()
    hal = _hal(s, k=0)
    assert hal.config.anchor_procedure == "code"
    _two_tasks(hal, s)
    y = torch.arange(4)
    means = hal.class_sum[y] / hal.class_count[y].clamp(min=1).view(-1, 1)
    torch.testing.assert_close(hal.build_anchors(1), means.clamp(0.0, 1.0))


def test_sum_all_anchor_term_is_eq5_as_printed():
    """``anchor_reduction="sum-all"``: every past anchor (no sampling) and the sum of the squared
    logit changes; ``"mean"`` is that sum / (anchors x logits) over the sampled ones."""
    s = _stream()
    hal = _hal(s, anchor_reduction="sum-all", anchors_per_step=1, lam=0.5)
    _two_tasks(hal, s)
    hal.end_task(1)
    e, et = hal._anchor_batch(2)
    assert len(e) == 8 and sorted(et.tolist()) == [0] * 4 + [1] * 4
    now, tilde = torch.randn(8, 4), torch.randn(8, 4)
    assert hal._anchor_term(now, tilde).item() == pytest.approx(0.5 * (now - tilde).pow(2).sum().item(), rel=1e-6)
    hal.config.anchor_reduction = "mean"
    assert hal._anchor_term(now, tilde).item() == pytest.approx(0.5 * (now - tilde).pow(2).sum().item() / 32,
                                                                rel=1e-6)
    assert len(hal._anchor_batch(2)[0]) == 1


def test_hal_paper_learner_name():
    from fastcl.experiments import LEARNERS

    s = _stream()
    make, _ = LEARNERS["hal-paper"]
    hal = make(MLP((20, 16, 4)), s, 1, {})
    assert hal.config.anchor_procedure == "paper" and hal.config.anchors == "hindsight"
    assert LEARNERS["hal"][0](MLP((20, 16, 4)), s, 1, {}).config.anchor_procedure == "code"
