"""fastcl.optim driven as a user would: their own nn.Module and loop, param groups, state_dict."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastcl.optim as fo


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)


def _batches(n=6, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _train(model, opt, batches, before_step=None):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if before_step is not None:
            before_step()
        opt.step()


def _groups(model, lr0, lr1, **extra):
    return [{"params": model[0].parameters(), "lr": lr0, **extra}, {"params": model[2].parameters(), "lr": lr1}]


def test_sgd_equals_torch_sgd_with_param_groups():
    ours, theirs = _model(), _model()
    _train(ours, fo.SGD(_groups(ours, 0.1, 0.03), lr=0.5), _batches())
    _train(theirs, torch.optim.SGD(_groups(theirs, 0.1, 0.03), lr=0.5), _batches())
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sgd_mixed_dtypes_and_missing_grads():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(2, dtype=torch.float64, requires_grad=True)
    frozen = torch.ones(4, requires_grad=True)  # never gets a gradient: untouched
    opt = fo.SGD([a, b, frozen], lr=0.5)
    (a.sum() + 2 * b.sum()).backward()
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.5))
    torch.testing.assert_close(b.detach(), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(frozen.detach(), torch.ones(4))
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_closure_is_called_with_grad_enabled():
    model = _model()
    opt = fo.SGD(model.parameters(), lr=0.1)
    x, y = _batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.requires_grad or loss.grad_fn is not None


@pytest.mark.parametrize("cls", [fo.SGD, fo.ProxSGD])
def test_bad_rates_name_the_argument(cls):
    p = [torch.zeros(2, requires_grad=True)]
    for bad, err in ((-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("0.1", TypeError)):
        with pytest.raises(err, match="lr"):
            cls(p, lr=bad)
    with pytest.raises(ValueError, match="lr"):
        cls(p, lr=0.1).add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": -1.0})
    with pytest.raises(ValueError, match="prox"):
        fo.ProxSGD(p, lr=0.1, prox=-1.0)


def test_sparse_gradients_are_rejected_and_nothing_changes():
    emb = nn.Embedding(5, 2, sparse=True)
    before = emb.weight.detach().clone()
    opt = fo.SGD(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)


def test_prox_zero_is_sgd():
    a, b = _model(), _model()
    _train(a, fo.ProxSGD(a.parameters(), lr=0.2, prox=0.0), _batches())
    _train(b, fo.SGD(b.parameters(), lr=0.2), _batches())
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_prox_step_matches_eq_21_by_hand():
    """theta <- (theta - lr*g + prox*h*theta0) / (prox*h + 1), h and theta0 from the state."""
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    opt = fo.ProxSGD([p], lr=0.5, prox=2.0, initial_importance=0.25)
    with torch.no_grad():
        p.add_(torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64))  # move away from the anchor
    (p * torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)).sum().backward()
    theta, g = p.detach().clone(), p.grad.clone()
    theta0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    opt.step()
    want = (theta - 0.5 * g + 2.0 * 0.25 * theta0) / (2.0 * 0.25 + 1)
    torch.testing.assert_close(p.detach(), want, rtol=1e-14, atol=0)


def test_strong_prox_pins_to_the_anchors_and_set_anchors_moves_them():
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    opt = fo.ProxSGD(model.parameters(), lr=0.5, prox=1e12)
    _train(model, opt, _batches(3))
    for p, s in zip(model.parameters(), start):
        torch.testing.assert_close(p.detach(), s, rtol=1e-6, atol=1e-6)
    opt.param_groups[0]["prox"] = 0.0
    _train(model, opt, _batches(2))
    opt.set_anchors()
    moved = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(m, s) for m, s in zip(moved, start))
    opt.param_groups[0]["prox"] = 1e12
    _train(model, opt, _batches(2, seed=5))
    for p, m in zip(model.parameters(), moved):
        torch.testing.assert_close(p.detach(), m, rtol=1e-6, atol=1e-6)


def test_accumulate_importance_is_eq_7():
    model = _model()
    opt = fo.ProxSGD(model.parameters(), lr=0.1, prox=1.0, initial_importance=0.5)
    x, y = _batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    opt.accumulate_importance(decay=0.9)
    for p in model.parameters():
        want = 0.9 * 0.5 + 0.1 * (p.grad * p.detach()).abs()
        torch.testing.assert_close(opt.state[p]["importance"], want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="decay"):
        opt.accumulate_importance(1.5)
    opt.set_importance(0.0)
    assert all(torch.count_nonzero(opt.state[p]["importance"]) == 0 for p in model.parameters())


@pytest.mark.parametrize("cls,kwargs", [(fo.SGD, {"lr": 0.1}), (fo.ProxSGD, {"lr": 0.1, "prox": 3.0})])
def test_state_dict_resume_is_exact(cls, kwargs):
    """Train 3 batches, save model + optimizer, load both into fresh objects, train 3 more: the
    same weights as 6 batches in one go (anchors and importance travel in the state dict)."""
    batches = _batches(6)
    straight = _model()
    opt = cls(straight.parameters(), **kwargs)
    hook = (lambda: opt.accumulate_importance(0.8)) if cls is fo.ProxSGD else None
    _train(straight, opt, batches, hook)

    first = _model()
    opt1 = cls(first.parameters(), **kwargs)
    _train(first, opt1, batches[:3], (lambda: opt1.accumulate_importance(0.8)) if cls is fo.ProxSGD else None)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    second = _model(seed=123)  # other weights: everything must come from the file
    opt2 = cls(second.parameters(), **kwargs)
    second.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    _train(second, opt2, batches[3:], (lambda: opt2.accumulate_importance(0.8)) if cls is fo.ProxSGD else None)
    for a, b in zip(straight.parameters(), second.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name,make", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1)),
    ("momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.1)),
])
def test_functional_inner_step_is_torch_optim(name, make):
    """fastcl.optim.functional.inner_step_ (the CTS / Reptile inner step) is PyTorch's optimizer."""
    from fastcl.optim.functional import inner_step_

    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
    theirs = [p.clone().requires_grad_(True) for p in ours]
    opt, state = make(theirs), {}
    for step in range(4):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ours]
        inner_step_(ours, grads, state, name, 0.1)
        for p, gr in zip(theirs, grads):
            p.grad = gr.clone()
        opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="optimizer"):
        inner_step_(ours, grads, {}, "rmsprop", 0.1)
