"""The parameter-update ops of the benchmark: prox_sgd_, prox_sgd, taylor_importance_,
emcl_meta_step_, trajectory_shift_, each with its eager chain, foreach and reference impls."""

from __future__ import annotations

import torch

from fastcl import ops as fops
from fastcl.ops import reference as ref

from .cases import (
    ALPHA0, DECAY, EPS, FLOAT, LAM, LR, LR_MODE, META_LR, PROX, R, _list_cases, _rand, _randn,
    _shift_cases, _update_impls, Case, Op, State,
)


# ---------------------------------------------------------------------------- prox_sgd_
def _prox_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    p = _randn(case.shapes, g)
    return {
        "params": p,
        "grads": _randn(case.shapes, g, 0.1),
        "anchors": _randn(case.shapes, g, 0.01, like=p),
        "importance": _rand(case.shapes, g, 0.1, 1.1),
    }


def prox_chain(P, G, A, H):
    """p <- (p - lr g + c a) / (c + 1), c = prox h: in-place ops, tensor by tensor."""
    for p, g, a, h in zip(P, G, A, H):
        c = torch.mul(h, PROX)
        p.add_(g, alpha=-LR)
        p.addcmul_(c, a)
        c.add_(1.0)
        p.div_(c)


def prox_foreach(P, G, A, H):
    c = torch._foreach_mul(H, PROX)
    torch._foreach_add_(P, G, alpha=-LR)
    torch._foreach_addcmul_(P, c, A)
    torch._foreach_add_(c, 1.0)
    torch._foreach_div_(P, c)


_PROX = ("params", "grads", "anchors", "importance")
PROX_OP = Op(
    name="prox_sgd_",
    kind="update",
    cases=_list_cases,
    make=_prox_make,
    impls=_update_impls(_PROX,
                        fused=lambda P, G, A, H: fops.prox_sgd_(P, G, A, H, LR, PROX),
                        chain=prox_chain,
                        loop=lambda P, G, A, H: ref.prox_sgd_(P, G, A, H, LR, PROX),
                        foreach=prox_foreach),
    written=("params",),
    n_read=lambda c: 4,
    n_write=lambda c: 1,
    n_distinct=lambda c: 4,
    doc=f"lr={LR}, prox={PROX}",
)


# ---------------------------------------------------------------------------- prox_sgd (out of place)
def prox_oop_chain(P, G, A, H):
    """The out-of-place step tensor by tensor: new tensors, the inputs unchanged."""
    out = []
    for p, g, a, h in zip(P, G, A, H):
        c = torch.mul(h, PROX)
        n = torch.add(p, g, alpha=-LR)
        n.addcmul_(c, a)
        c.add_(1.0)
        out.append(n.div_(c))
    return out


def prox_oop_foreach(P, G, A, H):
    c = torch._foreach_mul(H, PROX)
    n = torch._foreach_add(P, G, alpha=-LR)
    torch._foreach_addcmul_(n, c, A)
    torch._foreach_add_(c, 1.0)
    torch._foreach_div_(n, c)
    return n


PROX_OOP_OP = Op(
    name="prox_sgd",
    kind="update",
    cases=_list_cases,
    make=_prox_make,
    impls=_update_impls(_PROX,
                        fused=lambda P, G, A, H: fops.prox_sgd(P, G, A, H, LR, PROX),
                        chain=prox_oop_chain,
                        loop=lambda P, G, A, H: ref.prox_sgd(P, G, A, H, LR, PROX),
                        foreach=prox_oop_foreach),
    written=(),  # returns new tensors; the check compares them and that the inputs are unchanged
    n_read=lambda c: 4,
    n_write=lambda c: 1,
    n_distinct=lambda c: 5,
    doc=f"out of place (returns new tensors: their allocation is part of the op), lr={LR}, prox={PROX}",
)


# ---------------------------------------------------------------------------- taylor_importance_
def _taylor_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {
        "importance": _rand(case.shapes, g, 0.0, 1.0),
        "grads": _randn(case.shapes, g, 0.1),
        "params": _randn(case.shapes, g),
    }


def taylor_chain(H, G, P):
    """h <- decay h + (1 - decay) |g p|: in-place ops, tensor by tensor."""
    for h, g, p in zip(H, G, P):
        t = torch.mul(g, p)
        t.abs_()
        h.mul_(DECAY)
        h.add_(t, alpha=1.0 - DECAY)


def taylor_foreach(H, G, P):
    t = torch._foreach_mul(G, P)
    torch._foreach_abs_(t)
    torch._foreach_mul_(H, DECAY)
    torch._foreach_add_(H, t, alpha=1.0 - DECAY)


_TAYLOR = ("importance", "grads", "params")
TAYLOR_OP = Op(
    name="taylor_importance_",
    kind="update",
    cases=_list_cases,
    make=_taylor_make,
    impls=_update_impls(_TAYLOR,
                        fused=lambda H, G, P: fops.taylor_importance_(H, G, P, DECAY),
                        chain=taylor_chain,
                        loop=lambda H, G, P: ref.taylor_importance_(H, G, P, DECAY),
                        foreach=taylor_foreach),
    written=("importance",),
    n_read=lambda c: 3,
    n_write=lambda c: 1,
    n_distinct=lambda c: 3,
    doc=f"decay={DECAY}",
)


# ---------------------------------------------------------------------------- emcl_meta_step_
def _emcl_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    p = _randn(case.shapes, g)
    return {
        "params": p,
        "fast_params": _randn(case.shapes, g, 0.01, like=p),
        "importance": _rand(case.shapes, g, 0.0, 1.0),
        "meta_lrs": _rand(case.shapes, g, 0.0, ALPHA0),
        "grads": _randn(case.shapes, g, 0.1),
    }


def emcl_chain(P, PK, H, A, G):
    """EMCL meta step (stabilised rates): in-place ops, tensor by tensor."""
    for p, pk, h, a, g in zip(P, PK, H, A, G):
        mg = torch.sub(p, pk)
        mg.mul_(h).mul_(LAM)            # G = lam h (theta0 - theta_k)
        t = torch.mul(g, p)
        t.abs_()                        # |g theta0_old|
        p.addcmul_(a, mg, value=-1.0)   # theta0 -= alpha G
        h.mul_(DECAY).add_(t, alpha=1.0 - DECAY)
        torch.add(h, EPS, out=t)
        t.reciprocal_().mul_(R).clamp_(max=1.0)
        torch.mul(t, ALPHA0, out=a)     # alpha = alpha0 min(1, r / (h + eps))


def emcl_foreach(P, PK, H, A, G):
    mg = torch._foreach_sub(P, PK)
    torch._foreach_mul_(mg, H)
    torch._foreach_mul_(mg, LAM)
    t = torch._foreach_mul(G, P)
    torch._foreach_abs_(t)
    torch._foreach_addcmul_(P, A, mg, value=-1.0)
    torch._foreach_mul_(H, DECAY)
    torch._foreach_add_(H, t, alpha=1.0 - DECAY)
    t = torch._foreach_add(H, EPS)
    torch._foreach_reciprocal_(t)
    torch._foreach_mul_(t, R)
    torch._foreach_clamp_max_(t, 1.0)
    torch._foreach_mul_(t, ALPHA0)
    torch._foreach_copy_(A, t)


_EMCL = ("params", "fast_params", "importance", "meta_lrs", "grads")


def _emcl_fused(P, PK, H, A, G):
    fops.emcl_meta_step_(P, PK, H, A, G, LAM, DECAY, R, LR_MODE, ALPHA0, EPS)


def _emcl_ref(P, PK, H, A, G):
    ref.emcl_meta_step_(P, PK, H, A, G, LAM, DECAY, R, LR_MODE, ALPHA0, EPS)


EMCL_OP = Op(
    name="emcl_meta_step_",
    kind="update",
    cases=_list_cases,
    make=_emcl_make,
    impls=_update_impls(_EMCL,
                        fused=_emcl_fused,
                        chain=emcl_chain,
                        loop=_emcl_ref,
                        foreach=emcl_foreach),
    written=("params", "importance", "meta_lrs"),
    n_read=lambda c: 5,
    n_write=lambda c: 3,
    n_distinct=lambda c: 5,
    doc=f"lr_mode=stabilised, lam={LAM}, decay={DECAY}, r={R}, alpha0={ALPHA0}, eps={EPS}",
)


# ---------------------------------------------------------------------------- trajectory_shift_
def _shift_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    phi = _randn(case.shapes, g)
    thetas = [p.unsqueeze(0) + 0.1 * torch.randn((case.T, *p.shape), generator=g, dtype=FLOAT) for p in phi]
    return {"phi": phi, "thetas": thetas}


def shift_chain(PHI, TH):
    """delta = lr (mean_T theta - phi); phi += delta; theta[t] += delta: tensor by tensor."""
    for p, th in zip(PHI, TH):
        d = th.mean(0)
        d.sub_(p).mul_(META_LR)
        p.add_(d)
        th.add_(d)


def shift_foreach(PHI, TH):
    """The foreach form. ``_foreach_*`` has no reduction over a dimension, so the mean over T is
    one ``mean(0)`` per tensor; the rest is foreach (the last add broadcasts delta over T)."""
    d = [th.mean(0) for th in TH]
    torch._foreach_sub_(d, PHI)
    torch._foreach_mul_(d, META_LR)
    torch._foreach_add_(PHI, d)
    torch._foreach_add_(TH, d)


_SHIFT = ("phi", "thetas")
SHIFT_OP = Op(
    name="trajectory_shift_",
    kind="update",
    cases=_shift_cases,
    make=_shift_make,
    impls=_update_impls(_SHIFT,
                        fused=lambda PHI, TH: fops.trajectory_shift_(PHI, TH, META_LR, True),
                        chain=shift_chain,
                        loop=lambda PHI, TH: ref.trajectory_shift_(PHI, TH, META_LR, True),
                        foreach=shift_foreach),
    written=("phi", "thetas"),
    n_read=lambda c: 1 + c.T,
    n_write=lambda c: 1 + c.T,
    n_distinct=lambda c: 1 + c.T,
    doc=f"meta_lr={META_LR}, shift=True",
)
