"""Bad input to the update ops, for the fused wrappers (fastcl.ops) and the references alike:
a ValueError / TypeError whose message names the offending argument, and no tensor changed.
Empty lists are a valid no-op. Tensors on the "meta" device: all-meta calls run the fake
kernels (which check like the CPU kernels); a call mixing cpu and meta tensors is an error."""

from __future__ import annotations

import math

import pytest
from hypothesis import event, given, strategies as st
import torch

import fastcl.ops as F
from fastcl.ops import reference as R
from update_ops_helpers import all_tensors, assert_same

IMPLS = [pytest.param(F, id="fused"), pytest.param(R, id="reference")]
SHAPES = [(3, 4), (5,), ()]


def lst(nonneg=False, lead=(), dtype=torch.float32):
    out = [torch.randn((*lead, *s), dtype=dtype) for s in SHAPES]
    return [t.abs() for t in out] if nonneg else out


# Valid calls, as (op name, list argument names, {argument: value}), and a lead dimension for
# the lists that carry one.
def valid(op):
    if op == "prox_sgd_" or op == "prox_sgd":
        return dict(params=lst(), grads=lst(), anchors=lst(), importance=lst(True), lr=0.1, prox=0.5)
    if op == "taylor_importance_":
        return dict(importance=lst(True), grads=lst(), params=lst(), decay=0.9)
    if op == "emcl_meta_step_":
        return dict(params=lst(), fast_params=lst(), importance=lst(True), meta_lrs=lst(True), grads=lst(),
                    lam=0.5, decay=0.9, r=0.1, lr_mode=0, alpha0=0.01, eps=1e-3)
    if op == "trajectory_shift_":
        return dict(phi=lst(), thetas=lst(lead=(3,)), meta_lr=0.3, shift=True)
    raise AssertionError(op)


LISTS = {
    "prox_sgd_": ["params", "grads", "anchors", "importance"],
    "prox_sgd": ["params", "grads", "anchors", "importance"],
    "taylor_importance_": ["importance", "grads", "params"],
    "emcl_meta_step_": ["params", "fast_params", "importance", "meta_lrs", "grads"],
    "trajectory_shift_": ["phi", "thetas"],
}
NONNEG_REALS = {
    "prox_sgd_": ["lr", "prox"], "prox_sgd": ["lr", "prox"], "taylor_importance_": [],
    "emcl_meta_step_": ["lam", "r", "alpha0", "eps"], "trajectory_shift_": ["meta_lr"],
}
DECAY = {"taylor_importance_", "emcl_meta_step_"}


def _replace(i, make):
    def mut(args, name):
        lst_ = list(args[name])
        lst_[i] = make(lst_[i])
        args[name] = lst_
    return mut


def _drop_last(args, name):
    args[name] = list(args[name])[:-1]


def _as_tensor(args, name):
    args[name] = args[name][0]


LIST_MUTATIONS = {
    # mutation: (function(args, name), exception, message pattern with {name})
    "shorter list": (_drop_last, ValueError, r"{name} has 2 tensors"),
    "shape": (_replace(1, lambda t: torch.randn(*t.shape, 2)), ValueError, r"{name}\[1\] has shape"),
    "dtype float64": (_replace(1, lambda t: t.double()), TypeError, r"{name}\[1\] has dtype torch.float64"),
    "integer": (_replace(1, lambda t: t.round().long()), TypeError, r"{name}\[1\] has dtype torch.int64"),
    "bool": (_replace(2, lambda t: t > 0), TypeError, r"{name}\[2\] has dtype torch.bool"),
    "meta device": (_replace(1, lambda t: t.to("meta")), ValueError, r"{name}\[1\] is on meta"),
    "a tensor, not a list": (_as_tensor, TypeError, r"{name} must be a list of tensors"),
}


def list_cases():
    for op, names in LISTS.items():
        for name in names:
            for mname, (mut, exc, pat) in LIST_MUTATIONS.items():
                if mname in ("shorter list", "shape") and name == names[0]:
                    continue  # the first list is the reference the others are measured against
                yield pytest.param(op, name, mut, exc, pat.format(name=name), id=f"{op}-{name}-{mname}")


def scalar_cases():
    for op in LISTS:
        for name in NONNEG_REALS[op]:
            for v in (-1e-9, -1.0, -math.inf):
                yield pytest.param(op, name, v, ValueError, rf"{name} must be >= 0", id=f"{op}-{name}={v}")
            yield pytest.param(op, name, math.nan, ValueError, rf"{name} must not be nan", id=f"{op}-{name}=nan")
            yield pytest.param(op, name, math.inf, ValueError, rf"{name} must be finite, got inf",
                               id=f"{op}-{name}=inf")
            yield pytest.param(op, name, "0.1", TypeError, rf"{name} must be a real number", id=f"{op}-{name}=str")
            yield pytest.param(op, name, None, TypeError, rf"{name} must be a real number", id=f"{op}-{name}=None")
        if op in DECAY:
            for v, pat in ((-0.1, "must be >= 0"), (1.0000001, "must be <= 1"), (math.inf, "must be <= 1"),
                           (math.nan, "must not be nan"), (True, "must be a real number")):
                yield pytest.param(op, "decay", v, TypeError if v is True else ValueError, "decay " + pat,
                                   id=f"{op}-decay={v}")
    for v in (3, -1, "adam", True, 0.5, None):
        yield pytest.param("emcl_meta_step_", "lr_mode", v, ValueError, "lr_mode must be",
                           id=f"emcl_meta_step_-lr_mode={v!r}")
    for v in (1, None, "yes"):
        yield pytest.param("trajectory_shift_", "shift", v, TypeError, "shift must be a bool",
                           id=f"trajectory_shift_-shift={v!r}")


def other_cases():
    def prox_without_anchors(a):
        a["anchors"] = a["importance"] = None

    def anchors_without_importance(a):
        a["importance"] = None

    def t_zero(a):
        a["thetas"] = [a["thetas"][0], torch.randn(0, 5), a["thetas"][2]]

    def theta_without_lead(a):
        a["thetas"] = [a["thetas"][0], a["thetas"][1], torch.randn(())]

    def expanded(name, i=1):
        def mut(a):
            a[name] = list(a[name])
            a[name][i] = torch.randn(1).expand(a[name][i].shape)
        return mut

    def first_list_empty(name):
        def mut(a):
            a[name] = []
        return mut

    cases = [
        ("prox_sgd_", prox_without_anchors, ValueError, r"prox=0.5 needs anchors"),
        ("prox_sgd", prox_without_anchors, ValueError, r"prox=0.5 needs anchors"),
        ("prox_sgd_", anchors_without_importance, ValueError, r"anchors and importance must both"),
        ("trajectory_shift_", t_zero, ValueError, r"thetas\[1\] has T = 0"),
        ("trajectory_shift_", theta_without_lead, ValueError, r"thetas\[2\] must have a leading T"),
        # a written tensor whose elements share memory (expand): cannot be written in place
        ("prox_sgd_", expanded("params"), ValueError, r"params\[1\] has internally overlapping memory"),
        ("taylor_importance_", expanded("importance"), ValueError, r"importance\[1\] has internally overlapping"),
        ("emcl_meta_step_", expanded("meta_lrs"), ValueError, r"meta_lrs\[1\] has internally overlapping"),
        ("trajectory_shift_", expanded("thetas"), ValueError, r"thetas\[1\] has internally overlapping"),
        # the first list empty but not the others
        ("prox_sgd_", first_list_empty("params"), ValueError, r"grads has 3 tensors but params has 0"),
        ("trajectory_shift_", first_list_empty("phi"), ValueError, r"thetas has 3 tensors but phi has 0"),
    ]
    for op, mut, exc, pat in cases:
        yield pytest.param(op, mut, exc, pat, id=f"{op}-" + pat.replace('\\', ''))


def call(impl, op, args):
    return getattr(impl, op)(**args)


def expect_rejected(impl, op, args, exc, pattern):
    tensors = [t for t in all_tensors(args) if t.device.type != "meta"]
    before = [t.clone() for t in tensors]
    with pytest.raises(exc, match=pattern):
        call(impl, op, args)
    for i, (t, b) in enumerate(zip(tensors, before)):
        assert_same(t, b, f"tensor {i} of a rejected call")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,name,mut,exc,pattern", list(list_cases()))
def test_bad_list(impl, op, name, mut, exc, pattern):
    torch.manual_seed(0)
    args = valid(op)
    mut(args, name)
    expect_rejected(impl, op, args, exc, pattern)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,name,value,exc,pattern", list(scalar_cases()))
def test_bad_scalar(impl, op, name, value, exc, pattern):
    torch.manual_seed(0)
    args = valid(op)
    args[name] = value
    expect_rejected(impl, op, args, exc, pattern)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,mut,exc,pattern", list(other_cases()))
def test_bad_call(impl, op, mut, exc, pattern):
    torch.manual_seed(0)
    args = valid(op)
    mut(args)
    expect_rejected(impl, op, args, exc, pattern)


def _raised(impl, op, args):
    try:
        call(impl, op, args)
    except (ValueError, TypeError) as e:
        return type(e), str(e)
    return None


def _all_bad_calls():
    for p in list_cases():
        op, name, mut, _, _ = p.values
        yield pytest.param(op, lambda a, mut=mut, name=name: mut(a, name), id=p.id)
    for p in scalar_cases():
        op, name, value, _, _ = p.values
        yield pytest.param(op, lambda a, name=name, value=value: a.__setitem__(name, value), id=p.id)
    for p in other_cases():
        op, mut, _, _ = p.values
        yield pytest.param(op, mut, id=p.id)


@pytest.mark.parametrize("op,mut", list(_all_bad_calls()))
def test_fused_and_reference_raise_the_same_error(op, mut):
    """Same exception class and the very same message (shapes, dtypes and numbers printed the
    Python way by the C++ checks too)."""
    out = []
    for impl in (F, R):
        torch.manual_seed(0)
        args = valid(op)
        mut(args)
        out.append(_raised(impl, op, args))
    assert out[0] is not None
    assert out[0] == out[1]


# --------------------------------------------------------------------------- empty lists
def empty(op):
    args = valid(op)
    for name in LISTS[op]:
        args[name] = []
    return args


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(LISTS))
def test_empty_lists_are_a_no_op(impl, op):
    out = call(impl, op, empty(op))
    assert out == ([] if op == "prox_sgd" else None)
    if op.startswith("prox_sgd"):
        args = empty(op)
        args.update(anchors=None, importance=None, prox=0.0)
        assert call(impl, op, args) == ([] if op == "prox_sgd" else None)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(LISTS))
def test_empty_lists_still_check_scalars(impl, op):
    args = empty(op)
    name = (NONNEG_REALS[op] or ["decay"])[0]
    args[name] = -1.0
    with pytest.raises(ValueError, match=name):
        call(impl, op, args)


def test_empty_lists_with_tuples_and_string_lr_mode():
    F.emcl_meta_step_((), (), (), (), (), 0.5, 0.9, 0.1, "stabilised", 0.01, 0.0)
    with pytest.raises(ValueError, match="lr_mode"):
        F.emcl_meta_step_((), (), (), (), (), 0.5, 0.9, 0.1, "adam", 0.01, 0.0)


# --------------------------------------------------------------------------- meta device
def to_meta(args):
    return {k: ([t.to("meta") for t in v] if isinstance(v, list) else v) for k, v in args.items()}


@pytest.mark.parametrize("op", list(LISTS))
def test_all_meta_call_runs_the_checked_fake_kernel(op):
    """Every tensor on meta: the fake kernel runs (no data, no error) and returns what the
    CPU kernel would return, in shape."""
    torch.manual_seed(0)
    args = to_meta(valid(op))
    out = call(F, op, args)
    if op == "prox_sgd":
        assert [o.shape for o in out] == [p.shape for p in args["params"]]
        assert all(o.device.type == "meta" for o in out)
    else:
        assert out is None


@pytest.mark.parametrize("op", list(LISTS))
def test_all_meta_call_with_bad_shapes_raises(op):
    torch.manual_seed(0)
    args = to_meta(valid(op))
    name = LISTS[op][1]
    args[name] = list(args[name])
    args[name][0] = torch.empty(7, 7, device="meta")
    with pytest.raises(ValueError, match=rf"{name}\[0\] has shape"):
        call(F, op, args)


# --------------------------------------------------------------------------- aliasing
def two(n=4):
    return [torch.randn(n), torch.randn(n)]


def aliasing_cases():
    w = torch.randn(4)
    base = torch.randn(8)
    a, b = torch.randn(4), torch.randn(4)
    h = torch.rand(4)
    th = torch.randn(3, 4)
    yield pytest.param("prox_sgd_", dict(params=[w, w], grads=two(), anchors=None, importance=None, lr=0.1, prox=0.0),
                       r"params\[0\] and params\[1\] are the same memory", id="same tensor twice in params")
    yield pytest.param("prox_sgd_", dict(params=[a, b], grads=[b, a], anchors=None, importance=None, lr=0.1, prox=0.0),
                       r"params\[([01])\] and grads\[(?!\1)[01]\] are the same memory",
                       id="grads crossed with params")
    yield pytest.param("prox_sgd_", dict(params=[base[0:4]], grads=[base[1:5]], anchors=None, importance=None,
                                         lr=0.1, prox=0.0),
                       r"partially overlap", id="partial overlap")
    yield pytest.param("taylor_importance_", dict(importance=[h, h.clone()], grads=two(), params=[a, h], decay=0.5),
                       r"importance\[0\] and params\[1\] are the same memory", id="params[1] is importance[0]")
    yield pytest.param("emcl_meta_step_", dict(params=two(), fast_params=two(), importance=[h, torch.rand(4)],
                                               meta_lrs=[h, torch.rand(4)], grads=two(), lam=0.5, decay=0.9, r=0.1,
                                               lr_mode=0, alpha0=0.01, eps=1e-3),
                       r"importance\[0\] and meta_lrs\[0\] are the same memory", id="meta_lrs is importance")
    yield pytest.param("trajectory_shift_", dict(phi=[th[0]], thetas=[th], meta_lr=0.5, shift=False),
                       r"overlap", id="phi is a row of thetas")
    inter = torch.randn(12)
    yield pytest.param("prox_sgd_", dict(params=[inter[0:6], inter[0::2]], grads=[torch.randn(6), torch.randn(6)],
                                         anchors=None, importance=None, lr=0.1, prox=0.0),
                       r"params\[[01]\] and params\[[01]\] are strided views of one storage",
                       id="written strided views that may overlap")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,args,pattern", list(aliasing_cases()))
def test_order_dependent_aliasing_is_rejected(impl, op, args, pattern):
    """Overlaps whose result would depend on the order of the writes (the same tensor twice in
    a written list, a written tensor read at another index, two written lists sharing memory,
    partial overlaps) are rejected by both, before any write."""
    expect_rejected(impl, op, args, ValueError, pattern)


@pytest.mark.parametrize("impl", IMPLS)
def test_allowed_aliasing(impl):
    """Accepted, and equal to the reference on unaliased copies: params that are disjoint views
    of one flat buffer; grads that are the params through another tensor object (detach) of the
    same memory; a strided param whose grad is the interleaved strided view of the same buffer
    and a contiguous param read as the grad of another index through a strided view ("too hard"
    to compare, safe: strided operands are staged before any write)."""
    torch.manual_seed(0)
    flat = torch.randn(30)
    inter = torch.randn(12)
    params = [flat[0:12].view(3, 4), flat[12:17], flat[17:18].view(()), inter[0::2], flat[24:30]]
    grads = [p.detach() for p in params[:3]] + [inter[1::2], flat[12:24:2]]
    expected = [p.clone() for p in params]
    R.prox_sgd_(expected, [e.clone() for e in expected[:3]] + [g.clone() for g in grads[3:]], None, None, 0.25, 0.0)
    flat_before = flat.clone()
    impl.prox_sgd_(params, grads, None, None, 0.25, 0.0)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-6)
    assert not torch.equal(flat, flat_before)


def _pool(seed):
    """Tensors of shape (4,): four independent ones; three views of one buffer of 8 ([0:4],
    [2:6], [4:8]: partial overlaps); and three of another ([0::2], [1::2] interleaved, [2:6]
    contiguous across both: "too hard" overlaps)."""
    g = torch.Generator().manual_seed(seed)
    own = [torch.rand(4, generator=g) + 0.1 for _ in range(4)]
    buf = torch.rand(8, generator=g) + 0.1
    buf2 = torch.rand(8, generator=g) + 0.1
    return own + [buf[0:4], buf[2:6], buf[4:8], buf2[0::2], buf2[1::2], buf2[2:6]], own + [buf, buf2]


@given(op=st.sampled_from(["prox_sgd_", "taylor_importance_", "emcl_meta_step_"]),
       n=st.integers(1, 4), picks=st.lists(st.integers(0, 9), min_size=20, max_size=20),
       seed=st.integers(0, 1000))
def test_random_aliasing_agrees_with_reference(op, n, picks, seed):
    """Lists drawn from a small pool of tensors (so with every kind of aliasing): the fused op
    and the reference both reject the call (ValueError, nothing changed) or both accept it with
    the same result."""
    results = []
    for impl in (F, R):
        pool, storages = _pool(seed)
        args = valid(op)
        for j, name in enumerate(LISTS[op]):
            args[name] = [pool[picks[(j * n + i) % len(picks)]] for i in range(n)]
        before = [s.clone() for s in storages]
        try:
            call(impl, op, args)
            results.append(("ok", storages))
        except ValueError as e:
            assert "memory" in str(e) or "storage" in str(e)
            for s, b in zip(storages, before):
                assert_same(s, b, "a tensor of a rejected call")
            results.append(("rejected", None))
    (kf, sf), (kr, sr) = results
    assert kf == kr, f"fused {kf}, reference {kr}"
    event(kf)
    if kf == "ok":
        for a, b in zip(sf, sr):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_expanded_read_only_inputs_are_accepted(impl):
    """Arguments that are only read may be expanded (stride-0) views: thetas with shift=False,
    grads / anchors / importance of prox_sgd_. They are read, never written back."""
    torch.manual_seed(0)
    phi = [torch.randn(2, 5)]
    thetas = [torch.randn(2, 5).expand(3, 2, 5)]
    expected = [phi[0] + 0.5 * (thetas[0][0] - phi[0])]
    impl.trajectory_shift_(phi, thetas, 0.5, False)
    torch.testing.assert_close(phi[0], expected[0], rtol=1e-6, atol=1e-6)

    p = [torch.randn(3, 4)]
    g, a, h = (torch.randn(4).expand(3, 4) for _ in range(3))
    want = R.prox_sgd([p[0].clone()], [g.clone()], [a.clone()], [h.abs().clone()], 0.1, 0.5)
    impl.prox_sgd_(p, [g], [a], [h.abs()], 0.1, 0.5)
    torch.testing.assert_close(p[0], want[0], rtol=1e-6, atol=1e-6)
