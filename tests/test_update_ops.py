"""Property tests: every fused update op equals its reference (fastcl/ops/reference.py).

Hypothesis draws the structure of a call (list length 1..70, a shape per tensor including 0-d
and 0-element ones, the dtype, the memory layout of every tensor, aliasing between lists, the
scalars, the magnitude of the values and how many of them are inf / -inf / nan / +-0); the
values come from a torch generator seeded by hypothesis. For every call we check:

* each written tensor equals the reference's within the rounding bound of
  ``update_ops_helpers`` (nan / inf where the reference has them);
* tensors the op only reads are bitwise unchanged;
* nothing outside a view is written (each non-contiguous or offset view lives inside a larger
  base filled with sentinels).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import fastcl.ops as F
from fastcl.ops import reference as R
from update_ops_helpers import (
    FLOATS,
    LAYOUTS,
    UNIT,
    assert_matches,
    assert_same,
    check_outside,
    clone_lists,
    d64,
    make,
    real,
    shapes,
    snapshot,
    specials,
)

pytestmark = pytest.mark.skipif(F.backend() == "reference", reason="the extension is not built")


def scales(dtype):
    """Magnitudes of the values. Wide for float / double but without overflow or underflow of
    a product of three inputs (that would make the FMA / no-FMA difference unbounded); about 1
    for half / bfloat16, where the reference rounds every intermediate to the storage dtype."""
    if dtype in (torch.float16, torch.bfloat16):
        return st.sampled_from([0.5, 1.0, 2.0])
    if dtype == torch.float32:
        return st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6])
    return st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30])


def draw_common(data, lo_n=1, hi_n=70):
    n = data.draw(st.integers(lo_n, hi_n), label="n")
    shp = data.draw(st.lists(shapes(), min_size=n, max_size=n), label="shapes")
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    scale = data.draw(scales(dtype), label="scale")
    special = data.draw(specials, label="special")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    return n, shp, dtype, scale, special, torch.Generator().manual_seed(seed)


def layouts(data, n, label):
    return data.draw(st.lists(st.sampled_from(LAYOUTS), min_size=n, max_size=n), label=label)


def build(data, shp, dtype, gen, label, *, scale, special, nonneg=False):
    lay = layouts(data, len(shp), label)
    return [make(s, dtype, l, gen, scale=scale, special=special, nonneg=nonneg) for s, l in zip(shp, lay)]


def unique(xs):
    out = []
    for x in xs:
        if all(x is not y for y in out):
            out.append(x)
    return out


def ts(helds):
    return None if helds is None else [h.t for h in helds]


# --------------------------------------------------------------------------- prox_sgd_ / prox_sgd
def prox_scale(p, g, a, h, lr, prox):
    """Magnitude of the terms of (p - lr*g + c*a) / (c + 1), c = prox*h (float64)."""
    p, g = d64(p), d64(g)
    if a is None:
        return p.abs() + lr * g.abs()
    c = prox * d64(h)
    return (p.abs() + lr * g.abs() + (c * d64(a)).abs()) / (c + 1).abs()


def draw_prox(data):
    n, shp, dtype, scale, special, gen = draw_common(data)
    lr = data.draw(real(0.0, 10.0), label="lr")
    prox = data.draw(st.one_of(st.just(0.0), real(0.0, 10.0)), label="prox")
    with_anchors = prox != 0.0 or data.draw(st.booleans(), label="anchors given with prox=0")
    alias = data.draw(st.booleans(), label="grads is params")
    params = build(data, shp, dtype, gen, "params layouts", scale=scale, special=special)
    grads = params if alias else build(data, shp, dtype, gen, "grads layouts", scale=scale, special=special)
    anchors = importance = None
    if with_anchors:
        anchors = build(data, shp, dtype, gen, "anchors layouts", scale=scale, special=special)
        importance = build(data, shp, dtype, gen, "importance layouts", scale=scale, special=special, nonneg=True)
    return params, grads, anchors, importance, lr, prox, alias


@given(data=st.data())
def test_prox_sgd_inplace_matches_reference(data):
    params, grads, anchors, importance, lr, prox, alias = draw_prox(data)
    P, G, A, H = clone_lists(ts(params), ts(grads), ts(anchors), ts(importance))
    before = clone_lists(ts(params), ts(grads), ts(anchors), ts(importance))
    R.prox_sgd_(P, G, A, H, lr, prox)
    if alias:
        assert G is not None and all(g is p for g, p in zip(G, P))
    snap_p = snapshot(params)
    read_only = [] if alias else list(grads)
    read_only += (anchors or []) + (importance or [])
    snap_r = snapshot(read_only)

    F.prox_sgd_(ts(params), ts(grads), ts(anchors), ts(importance), lr, prox)

    k = 16 if anchors is not None else 4  # 2x the roundings of the expression
    p0, g0, a0, h0 = before
    for i, (p, ref) in enumerate(zip(params, P)):
        scale = prox_scale(p0[i], g0[i], a0 and a0[i], h0 and h0[i], lr, prox)
        assert_matches(p.t, ref, scale=scale, k=k, what=f"params[{i}]")
    check_outside(snap_p, "params")
    for i, (h, base) in enumerate(snap_r):
        assert_same(h.base, base, f"read-only input {i}")


@given(data=st.data())
def test_prox_sgd_out_of_place_matches_reference(data):
    params, grads, anchors, importance, lr, prox, alias = draw_prox(data)
    args = (ts(params), ts(grads), ts(anchors), ts(importance))
    snap = snapshot(params + ([] if alias else grads) + (anchors or []) + (importance or []))
    expected = R.prox_sgd(*clone_lists(*args), lr, prox)

    out = F.prox_sgd(*args, lr, prox)

    assert isinstance(out, list) and len(out) == len(params)
    k = 16 if anchors is not None else 4
    for i, (o, e) in enumerate(zip(out, expected)):
        assert o.is_contiguous()
        scale = prox_scale(args[0][i], args[1][i], args[2] and args[2][i], args[3] and args[3][i], lr, prox)
        assert_matches(o, e, scale=scale, k=k, what=f"out[{i}]")
        # a fresh tensor: writing it must not write any input
        if o.numel():
            assert all(o.data_ptr() != h.base.data_ptr() for h, _ in snap)
    for i, (h, base) in enumerate(snap):
        assert_same(h.base, base, f"input {i}")


# --------------------------------------------------------------------------- taylor_importance_
def taylor_scale(h, g, p, decay):
    return decay * d64(h).abs() + (1 - decay) * (d64(g) * d64(p)).abs()


@given(data=st.data())
def test_taylor_importance_matches_reference(data):
    n, shp, dtype, scale, special, gen = draw_common(data)
    decay = data.draw(real(0.0, 1.0), label="decay")
    alias = data.draw(st.sampled_from(["none", "grads is params", "params is importance"]), label="alias")
    importance = build(data, shp, dtype, gen, "importance layouts", scale=scale, special=special, nonneg=True)
    grads = build(data, shp, dtype, gen, "grads layouts", scale=scale, special=special)
    if alias == "grads is params":
        params = grads
    elif alias == "params is importance":
        params = importance
    else:
        params = build(data, shp, dtype, gen, "params layouts", scale=scale, special=special)
    Hr, Gr, Pr = clone_lists(ts(importance), ts(grads), ts(params))
    H0, G0, P0 = clone_lists(ts(importance), ts(grads), ts(params))
    R.taylor_importance_(Hr, Gr, Pr, decay)
    snap_h = snapshot(importance)
    read_only = unique(x for x in grads + params if all(x is not h for h in importance))
    snap_r = snapshot(read_only)

    F.taylor_importance_(ts(importance), ts(grads), ts(params), decay)

    for i, (h, ref) in enumerate(zip(importance, Hr)):
        assert_matches(h.t, ref, scale=taylor_scale(H0[i], G0[i], P0[i], decay), k=10, what=f"importance[{i}]")
    check_outside(snap_h, "importance")
    for i, (h, base) in enumerate(snap_r):
        assert_same(h.base, base, f"read-only input {i}")


# --------------------------------------------------------------------------- emcl_meta_step_
@given(data=st.data())
def test_emcl_meta_step_matches_reference(data):
    n, shp, dtype, scale, special, gen = draw_common(data)
    lam = data.draw(real(0.0, 4.0), label="lam")
    decay = data.draw(real(0.0, 1.0), label="decay")
    r = data.draw(real(0.0, 4.0), label="r")
    lr_mode = data.draw(st.sampled_from([0, 1, 2, "paper", "stabilised", "inverse"]), label="lr_mode")
    alpha0 = data.draw(real(0.0, 1.0), label="alpha0")
    # half: h_new can underflow to a subnormal in the reference (not in the float kernel);
    # eps > 0 keeps the rate a*r/(h_new+eps) a well-conditioned function of h_new.
    low_eps = 1e-3 if dtype == torch.float16 else 0.0
    eps = data.draw(st.one_of(st.just(low_eps), real(low_eps, 1.0)), label="eps")
    fast_is_params = data.draw(st.booleans(), label="fast_params is params")
    grads_is_params = data.draw(st.booleans(), label="grads is params")
    params = build(data, shp, dtype, gen, "params layouts", scale=scale, special=special)
    fast = params if fast_is_params else build(data, shp, dtype, gen, "fast layouts", scale=scale, special=special)
    importance = build(data, shp, dtype, gen, "importance layouts", scale=scale, special=special, nonneg=True)
    meta_lrs = build(data, shp, dtype, gen, "meta_lrs layouts", scale=1.0, special=special, nonneg=True)
    grads = params if grads_is_params else build(data, shp, dtype, gen, "grads layouts", scale=scale, special=special)
    lists = (ts(params), ts(fast), ts(importance), ts(meta_lrs), ts(grads))
    Pr, Kr, Hr, Ar, Gr = clone_lists(*lists)
    P0, K0, H0, A0, G0 = clone_lists(*lists)
    mode = F.LR_MODES.get(lr_mode, lr_mode)
    R.emcl_meta_step_(Pr, Kr, Hr, Ar, Gr, lam, decay, r, mode, alpha0, eps)
    written = params + importance + meta_lrs
    snap_w = snapshot(written)
    read_only = unique(x for x in fast + grads if all(x is not w for w in written))
    snap_r = snapshot(read_only)

    F.emcl_meta_step_(*lists, lam, decay, r, lr_mode, alpha0, eps)

    for i in range(n):
        p, pk, h, a, g = (d64(x[i]) for x in (P0, K0, H0, A0, G0))
        p_scale = p.abs() + (a * lam * h * (p - pk)).abs()
        assert_matches(params[i].t, Pr[i], scale=p_scale, k=16, what=f"params[{i}]")
        h_scale = taylor_scale(h, g, p, decay)
        assert_matches(importance[i].t, Hr[i], scale=h_scale, k=10, what=f"importance[{i}]")
        # a_new = a*r/(h_new+eps) (or alpha0*min(1, r/(h_new+eps))): 3 roundings, plus the
        # relative error of h_new (its bound above) divided by h_new + eps.
        u = UNIT[dtype]
        h_new = d64(Hr[i])
        h_err = 10 * u * (h_new.abs() + torch.nan_to_num(h_scale, nan=0.0, posinf=0.0)) \
            + 20 * u * torch.finfo(dtype).tiny
        extra = h_err / (h_new + eps).abs()
        assert_matches(meta_lrs[i].t, Ar[i], k=8, extra_rel=extra, what=f"meta_lrs[{i}] (lr_mode={lr_mode!r})")
    check_outside(snap_w, "written")
    for i, (h, base) in enumerate(snap_r):
        assert_same(h.base, base, f"read-only input {i}")


# --------------------------------------------------------------------------- trajectory_shift_
@given(data=st.data())
def test_trajectory_shift_matches_reference(data):
    n, shp, dtype, scale, special, gen = draw_common(data)
    T = data.draw(st.integers(1, 8), label="T")
    meta_lr = data.draw(real(0.0, 2.0), label="meta_lr")
    shift = data.draw(st.booleans(), label="shift")
    phi = build(data, shp, dtype, gen, "phi layouts", scale=scale, special=special)
    thetas = build(data, [(T,) + s for s in shp], dtype, gen, "thetas layouts", scale=scale, special=special)
    Phr, Thr = clone_lists(ts(phi), ts(thetas))
    Ph0, Th0 = clone_lists(ts(phi), ts(thetas))
    R.trajectory_shift_(Phr, Thr, meta_lr, shift)
    snap_phi = snapshot(phi)
    snap_th = snapshot(thetas)

    F.trajectory_shift_(ts(phi), ts(thetas), meta_lr, shift)

    k = 2 * (T + 3)
    for i in range(n):
        ph, th = d64(Ph0[i]), d64(Th0[i])
        mean_abs = th.abs().mean(0) if th.shape[0] else th.sum(0)
        d_scale = meta_lr * (mean_abs + ph.abs())
        assert_matches(phi[i].t, Phr[i], scale=ph.abs() + d_scale, k=k, what=f"phi[{i}]")
        if shift:
            assert_matches(thetas[i].t, Thr[i], scale=th.abs() + d_scale, k=k, what=f"thetas[{i}]")
    check_outside(snap_phi, "phi")
    if shift:
        check_outside(snap_th, "thetas")
    else:
        for i, (h, base) in enumerate(snap_th):
            assert_same(h.base, base, f"thetas[{i}] (shift=False)")


# --------------------------------------------------------------------------- parallel split
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_parallel_split_across_tensors(dtype):
    """Lists whose elements exceed several grains (16384 elements), split across two threads at
    positions inside tensors and at tensor boundaries, with 0-element tensors in between."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(1)
        shp = [(40000,), (0,), (3, 7), (0, 5), (), (16385,), (128, 129), (1,), (20000,)]
        mk = lambda nonneg=False, pre=(): [make(pre + s, dtype, "contig", gen, nonneg=nonneg).t for s in shp]  # noqa: E731
        p, g, a, h = mk(), mk(), mk(), mk(True)
        P, G, A, H = clone_lists(p, g, a, h)
        P0 = clone_lists(p)[0]
        F.prox_sgd_(p, g, a, h, 0.3, 0.7)
        R.prox_sgd_(P, G, A, H, 0.3, 0.7)
        for i, (x, y) in enumerate(zip(p, P)):
            assert_matches(x, y, scale=prox_scale(P0[i], G[i], A[i], H[i], 0.3, 0.7), k=16, what=f"params[{i}]")
        h0 = clone_lists(h)[0]
        F.taylor_importance_(h, g, a, 0.9)
        R.taylor_importance_(H, G, A, 0.9)
        for i, (x, y) in enumerate(zip(h, H)):
            assert_matches(x, y, scale=taylor_scale(h0[i], g[i], a[i], 0.9), k=10, what=f"importance[{i}]")
        th = mk(pre=(3,))
        TH = clone_lists(th)[0]
        phi, PHI = clone_lists(p, P)
        F.trajectory_shift_(phi, th, 0.5, True)
        R.trajectory_shift_(PHI, TH, 0.5, True)
        for i in range(len(shp)):
            # |values| <= ~5 (normal draws): the terms of phi + 0.5*(mean - phi) are below 4*5
            assert_matches(phi[i], PHI[i], scale=torch.full(PHI[i].shape, 20.0), k=12, what=f"phi[{i}]")
            assert_matches(th[i], TH[i], scale=torch.full(TH[i].shape, 20.0), k=12, what=f"thetas[{i}]")
    finally:
        torch.set_num_threads(old)


def test_emcl_stabilised_rate_is_a_true_division():
    """r / (h + eps) with r = 0 over a denormal denominator is 0 (a regression: the reference once
    computed it as r * reciprocal(h + eps) = 0 * inf = nan)."""
    for impl in (F.emcl_meta_step_, R.emcl_meta_step_):
        p = torch.zeros(3, dtype=torch.float64)
        h, a = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        impl([p], [p.clone()], [h], [a], [p.clone()], 0.0, 0.0, 0.0, 1, 0.5, 5e-324)
        assert torch.equal(a, torch.zeros(3, dtype=torch.float64))
