"""La-MAML's meta loss (issue 12): the prefix average of the authors' code (default) and the loss
at theta_k (``meta_loss="last"``), each against a step computed by hand or equation by equation,
first order against second order where the Hessian terms vanish, by-hand against autograd."""

import pytest
import torch
import torch.nn.functional as F

from fastcl.algorithms import LaMAML, LaMAMLConfig
from fastcl.algorithms.lamaml import META_LOSSES, functional_forward
from fastcl.models import MLP

from test_learners import _stream

READINGS = pytest.mark.parametrize("meta_loss", META_LOSSES)


class _LinearLossLaMAML(LaMAML):
    """La-MAML on a loss linear in the parameters (minus the true-class logit of a linear model):
    the inner gradients do not depend on the parameters, so the second-order terms vanish."""

    def _fast_loss(self, fast, x, y, tasks):
        out = functional_forward(self.model, self.param_names, fast, x)
        return -out.gather(1, y[:, None]).mean()


def _one_step_learner(cls, sizes, meta_loss, second_order, alpha0=0.1, eta=0.1):
    """No memory (the meta batch is the incoming batch), one glance, no clipping: one meta-update."""
    cfg = LaMAMLConfig(meta_loss=meta_loss, second_order=second_order, memory_size=0, glances=1,
                       alpha0=alpha0, eta=eta, grad_clip=0.0)
    return cls(MLP(sizes), sizes[-1], (sizes[0],), cfg)


def test_prefix_is_the_default_and_bad_readings_are_rejected():
    assert LaMAMLConfig().meta_loss == "prefix"
    with pytest.raises(ValueError, match="meta_loss"):
        LaMAMLConfig(meta_loss="first")


# --------------------------------------------------------------------------- by hand, in numbers
# Model W [2, 1], b [2] at zero, loss -(W_y x + b_y) (mean over the batch), batch b = ((x=1, y=0),
# (x=2, y=1)), alpha_0 = eta = 0.1. Inner gradients (constant): g_1 = (dW_0 -1, db_0 -1),
# g_2 = (dW_1 -2, db_1 -1); S_1 = g_1, S_2 = g_1 + g_2. Meta gradient G (the same at every theta):
# dW = (-1/2, -2/2), db = (-1/2, -1/2). theta_i = theta_0 - 0.1 S_i, so dL(theta_i)/dalpha = -G S_i.
#   prefix: dL/dalpha = -(G S_1 + G S_2) / 2 = W (-0.5, -1),   b (-0.5, -0.25)
#   last:   dL/dalpha = -G S_2                = W (-0.5, -2),   b (-0.5, -0.5)
# alpha' = 0.1 - 0.1 dL/dalpha; theta' = 0 - relu(alpha') G (alpha first, then theta with alpha').
# Meta losses: L(theta_1) = -(0.1 + 0.1) / 2 = -0.1, L(theta_2) = -(0.2 + 0.5) / 2 = -0.35.
_BY_HAND = {
    "prefix": {"alpha_w": [[0.15], [0.2]], "alpha_b": [0.15, 0.125],
               "w": [[0.075], [0.2]], "b": [0.075, 0.0625], "loss": -0.225},
    "last": {"alpha_w": [[0.15], [0.3]], "alpha_b": [0.15, 0.15],
             "w": [[0.075], [0.3]], "b": [0.075, 0.075], "loss": -0.35},
}


@READINGS
@pytest.mark.parametrize("second_order", [True, False], ids=["second", "first"])
def test_one_meta_update_computed_by_hand(meta_loss, second_order):
    learner = _one_step_learner(_LinearLossLaMAML, (1, 2), meta_loss, second_order)
    learner.by_hand = False  # the linear loss only exists on the autograd path
    with torch.no_grad():
        for p in learner.params:
            p.zero_()
    loss = learner.observe(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 1]), 0)
    want = _BY_HAND[meta_loss]
    assert loss == pytest.approx(want["loss"], abs=1e-6)
    torch.testing.assert_close(learner.alpha[0], torch.tensor(want["alpha_w"]))
    torch.testing.assert_close(learner.alpha[1], torch.tensor(want["alpha_b"]))
    torch.testing.assert_close(learner.params[0].detach(), torch.tensor(want["w"]))
    torch.testing.assert_close(learner.params[1].detach(), torch.tensor(want["b"]))


# --------------------------------------------------------------------------- equation by equation
def _ce_grads(w, b, x, y):
    """Mean cross-entropy of softmax(x W^T + b) and its gradient in closed form: (p - onehot) / n."""
    logits = x @ w.t() + b
    d = torch.softmax(logits, 1)
    loss = -torch.log(d[torch.arange(len(y)), y]).mean()
    d[torch.arange(len(y)), y] -= 1
    d /= len(y)
    return loss, d.t() @ x, d.sum(0)


def _hand_first_order(w0, b0, alpha0, eta, x, y, meta_loss):
    """First-order La-MAML, one glance, meta batch = b, written out: theta_i = theta_{i-1} - r g_i,
    S_i = sum_{j<=i} g_j, G_i = grad L(theta_i); prefix: dtheta = mean_i G_i,
    dalpha = -mean_i S_i G_i; last: the i = k terms alone."""
    r = max(alpha0, 0.0)
    w, b = w0.clone(), b0.clone()
    sw, sb = torch.zeros_like(w), torch.zeros_like(b)
    terms = []
    for i in range(len(y)):
        _, gw, gb = _ce_grads(w, b, x[i:i + 1], y[i:i + 1])
        w, b = w - r * gw, b - r * gb
        sw, sb = sw + gw, sb + gb
        loss, Gw, Gb = _ce_grads(w, b, x, y)
        terms.append((loss, Gw, Gb, -sw * Gw, -sb * Gb))
    if meta_loss == "last":
        terms = terms[-1:]
    loss, gw, gb, aw, ab = (sum(t[j] for t in terms) / len(terms) for j in range(5))
    alpha_w, alpha_b = alpha0 - eta * aw, alpha0 - eta * ab
    return float(loss), w0 - alpha_w.clamp(min=0) * gw, b0 - alpha_b.clamp(min=0) * gb, alpha_w, alpha_b


@READINGS
@pytest.mark.parametrize("by_hand", [True, False], ids=["by-hand", "autograd"])
def test_first_order_step_matches_the_equations(meta_loss, by_hand):
    torch.manual_seed(3)
    x, y = torch.randn(5, 6), torch.tensor([0, 2, 1, 2, 0])
    learner = _one_step_learner(LaMAML, (6, 3), meta_loss, False, alpha0=0.2, eta=0.5)
    learner.by_hand = by_hand
    w0, b0 = (p.detach().clone() for p in learner.params)
    loss = learner.observe(x, y, 0)
    want_loss, w, b, aw, ab = _hand_first_order(w0, b0, 0.2, 0.5, x, y, meta_loss)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    for got, want in zip(list(learner.params) + learner.alpha, (w, b, aw, ab)):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def _two_layer(params, x):
    w1, b1, w2, b2 = params
    return F.relu(x @ w1.t() + b1) @ w2.t() + b2


@READINGS
def test_second_order_step_matches_the_objective(meta_loss):
    """The second-order meta gradient is the exact gradient of the chosen objective in (theta_0,
    alpha): (1/k) sum_i L(theta_i) or L(theta_k), with theta_i built with its graph."""
    torch.manual_seed(4)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    learner = _one_step_learner(LaMAML, (5, 4, 3), meta_loss, True, alpha0=0.3, eta=0.2)
    theta0 = [p.detach().clone().requires_grad_(True) for p in learner.params]
    alpha = [torch.full_like(p, 0.3, requires_grad=True) for p in theta0]
    fast, losses = theta0, []
    for i in range(4):
        g = torch.autograd.grad(F.cross_entropy(_two_layer(fast, x[i:i + 1]), y[i:i + 1]), fast, create_graph=True)
        fast = [w - F.relu(a) * gi for w, a, gi in zip(fast, alpha, g)]
        losses.append(F.cross_entropy(_two_layer(fast, x), y))
    objective = sum(losses) / 4 if meta_loss == "prefix" else losses[-1]
    grads = torch.autograd.grad(objective, theta0 + alpha)
    new_alpha = [a.detach() - 0.2 * ga for a, ga in zip(alpha, grads[4:])]
    new_theta = [t.detach() - na.clamp(min=0) * gt for t, na, gt in zip(theta0, new_alpha, grads[:4])]
    loss = learner.observe(x, y, 0)
    assert loss == pytest.approx(float(objective.detach()), rel=1e-5)
    for got, want in zip(list(learner.params) + learner.alpha, new_theta + new_alpha):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_the_readings_agree_on_one_example_and_differ_on_more():
    torch.manual_seed(5)
    x, y = torch.randn(3, 6), torch.tensor([0, 2, 1])
    for k, same in ((1, True), (3, False)):
        states = []
        for meta_loss in META_LOSSES:
            torch.manual_seed(0)
            learner = _one_step_learner(LaMAML, (6, 3), meta_loss, False)
            learner.observe(x[:k], y[:k], 0)
            states.append(torch.cat([p.detach().flatten() for p in learner.params]))
        assert torch.allclose(*states) == same


# --------------------------------------------------------------------------- whole streams
def _train(learner, stream):
    gen = torch.Generator().manual_seed(0)
    for task in stream:
        for x, y in task.batches(10, gen):
            learner.observe(x, y, task.task_id)
    return [p.detach().clone() for p in learner.params] + [a.clone() for a in learner.alpha]


@READINGS
def test_first_order_equals_second_order_where_the_hessian_vanishes(meta_loss):
    s = _stream(num_tasks=2, n=30)
    states = []
    for second in (True, False):
        torch.manual_seed(0)
        learner = _LinearLossLaMAML(MLP((20, 4)), 4, (20,), LaMAMLConfig(
            second_order=second, meta_loss=meta_loss, memory_size=20, glances=2, alpha0=0.05, eta=0.05))
        learner.by_hand = False
        states.append(_train(learner, s))
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, torch.full_like(a, 0.05)) for a in states[0][2:])  # alpha moved


@READINGS
def test_first_order_by_hand_equals_autograd(meta_loss):
    s = _stream(num_tasks=2, n=30, multi_head=True)
    states = []
    for by_hand in (True, False):
        torch.manual_seed(0)
        cfg = LaMAMLConfig(second_order=False, meta_loss=meta_loss, memory_size=30, glances=2, alpha0=0.05,
                           eta=0.05, seed=0)
        learner = LaMAML(MLP((20, 16, s.num_classes)), s.num_classes, (20,), cfg,
                         task_classes=[t.classes for t in s])
        assert learner.by_hand
        learner.by_hand = by_hand
        states.append(_train(learner, s))
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_cli_sets_either_reading():
    from fastcl.experiments import LEARNERS, parse_overrides

    for name in ("lamaml", "lamaml-fo"):
        _, cfg_cls = LEARNERS[name]
        assert cfg_cls is LaMAMLConfig
        assert parse_overrides(["meta_loss=last"], cfg_cls) == {"meta_loss": "last"}
    with pytest.raises(ValueError, match="meta_loss"):
        LaMAMLConfig(**parse_overrides(["meta_loss=sum"], LaMAMLConfig))


@pytest.mark.parametrize("cls", ["LaMAMLConfig", "EMCLConfig"])
def test_lr_that_does_nothing_is_rejected(cls):
    """La-MAML's and EMCL's rates are alpha / beta: an lr (inherited from LearnerConfig) is an error."""
    import fastcl.algorithms as A

    config = getattr(A, cls)
    assert config().lr == 0.0
    with pytest.raises(ValueError, match=rf"lr does nothing in {cls}"):
        config(lr=0.1)
