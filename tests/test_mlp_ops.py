"""mlp_prox_steps_, the fused EMCL inner loop of a ReLU MLP, against its reference.

Hypothesis draws the network (1 to 3 layers, widths 0 to 9, with zero-width hidden layers and
zero-feature inputs), the number of steps k (0 to 6), the dtype, the memory layout of every
tensor (contiguous, transposed, strided, offset inside a larger base of sentinels), whether
anchors / importance are given, the step size and the prox strength. For every call:

* params equal the reference's (k sequential autograd gradients, each followed by
  ``reference.prox_sgd_``) within a tolerance that grows with k;
* the inputs (x, y, anchors, importance) are bitwise unchanged and nothing outside a view is
  written.

Then: opcheck, the version counter, the split of the parallel loops (1 to 4 threads: bitwise
equal), and bad input (errors naming the argument; a rejected call changes nothing). Every test
runs under each CPU ISA variant this machine supports (tests/conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st
from torch.library import opcheck

import fastcl.ops as F
from fastcl.ops import reference as R
from update_ops_helpers import LAYOUTS, assert_same, check_outside, make, real, snapshot

pytestmark = pytest.mark.skipif(F.backend() == "reference", reason="the extension is not built")

# Per-step error: float64 ~1e-16 relative; float32 ~1e-7, compounded over at most 6 steps of
# a well-conditioned net (weights ~ 1/sqrt(fan_in), lr <= 0.5).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def net(widths, dtype, gen, layouts, scale=1.0):
    """[W_1, b_1, ...] as Held views (layouts: one per tensor)."""
    out = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        w_scale = scale / math.sqrt(max(n_in, 1))
        out.append(make((n_out, n_in), dtype, layouts[2 * i], gen, scale=w_scale))
        out.append(make((n_out,), dtype, layouts[2 * i + 1], gen, scale=0.1 * scale))
    return out


def ts(helds):
    return [h.t for h in helds]


@st.composite
def calls(draw):
    num_layers = draw(st.integers(1, 3), label="L")
    hidden = draw(st.lists(st.integers(0, 9), min_size=num_layers - 1, max_size=num_layers - 1), label="hidden")
    widths = [draw(st.integers(0, 9), label="n_0")] + hidden + [draw(st.integers(1, 9), label="n_L")]
    if draw(st.integers(0, 15), label="big") == 0:  # vector bodies, tails, several parallel chunks
        widths[0] = draw(st.integers(100, 700), label="big n_0")
    k = draw(st.integers(0, 6), label="k")
    dtype = draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    n = 2 * num_layers
    lay = lambda label: draw(st.lists(st.sampled_from(LAYOUTS), min_size=n, max_size=n), label=label)  # noqa: E731
    anchored = draw(st.booleans(), label="anchors")
    lr = draw(real(0.0, 0.5), label="lr")
    prox = draw(real(0.0, 5.0), label="prox") if anchored else 0.0
    x_layout = draw(st.sampled_from(["contig", "transposed", "4d"]), label="x layout")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    return dict(widths=widths, k=k, dtype=dtype, params_layout=lay("params layouts"),
                anchors_layout=lay("anchors layouts") if anchored else None,
                importance_layout=lay("importance layouts") if anchored else None,
                lr=lr, prox=prox, x_layout=x_layout, seed=seed)


def build(c):
    gen = torch.Generator().manual_seed(c["seed"])
    widths, k, dtype = c["widths"], c["k"], c["dtype"]
    params = net(widths, dtype, gen, c["params_layout"])
    anchors = importance = None
    if c["anchors_layout"] is not None:
        anchors = net(widths, dtype, gen, c["anchors_layout"])
        importance = [make(h.t.shape, dtype, lay, gen, nonneg=True)
                      for h, lay in zip(params, c["importance_layout"])]
    n0 = widths[0]
    if c["x_layout"] == "transposed":  # [k, n_0] with transposed strides
        x = torch.randn(n0, k, generator=gen, dtype=torch.float64).to(dtype).t()
    elif c["x_layout"] == "4d" and n0 % 2 == 0:  # [k, 2, n_0/2]: flattened by the op
        x = torch.randn(k, 2, n0 // 2, generator=gen, dtype=torch.float64).to(dtype)
    else:
        x = torch.randn(k, n0, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, widths[-1], (k,), generator=gen)
    return params, x, y, anchors, importance


@given(c=calls())
def test_mlp_prox_steps_matches_reference(c):
    params, x, y, anchors, importance = build(c)
    want = [p.t.detach().clone() for p in params]
    a_t = None if anchors is None else ts(anchors)
    h_t = None if importance is None else ts(importance)
    R.mlp_prox_steps_(want, x, y, a_t, h_t, c["lr"], c["prox"])
    reads = [x, y] + (a_t + h_t if anchors is not None else [])
    before = [t.clone() for t in reads]
    snap = snapshot(params + (anchors + importance if anchors is not None else []))

    F.mlp_prox_steps_(ts(params), x, y, a_t, h_t, c["lr"], c["prox"])

    for i, (got, ref) in enumerate(zip(ts(params), want)):
        torch.testing.assert_close(got, ref, **TOL[c["dtype"]], msg=lambda m, i=i: f"params[{i}]: {m}")
    for i, (t, b) in enumerate(zip(reads, before)):
        assert_same(t, b, f"input {i}")
    check_outside(snap, "params / anchors / importance")
    if c["k"] == 0:
        for got, ref in zip(ts(params), want):
            assert_same(got, ref, "params with k = 0")


def _mnist_like(dtype=torch.float32, k=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [h.t for h in net([784, 100, 100, 10], dtype, gen, ["contig"] * 6)]
    anchors = [p + 0.01 * torch.randn(p.shape, generator=gen, dtype=dtype) for p in params]
    importance = [torch.rand(p.shape, generator=gen, dtype=dtype) for p in params]
    x = torch.rand(k, 784, generator=gen, dtype=dtype)
    y = torch.randint(0, 10, (k,), generator=gen)
    return params, x, y, anchors, importance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mnist_sized_inner_loop_matches_reference(dtype):
    """The EMCL setting: MLP 784-100-100-10, k = 20 (batch + replay), Table II's beta and
    gamma*lambda; the first layer runs in several parallel chunks."""
    params, x, y, anchors, importance = _mnist_like(dtype)
    want = [p.clone() for p in params]
    R.mlp_prox_steps_(want, x, y, anchors, importance, 0.15, 3.0)
    F.mlp_prox_steps_(params, x, y, anchors, importance, 0.15, 3.0)
    for got, ref in zip(params, want):
        torch.testing.assert_close(got, ref, **TOL[dtype])


@pytest.mark.parametrize("anchored", [True, False], ids=["anchors", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_across_threads_is_bitwise_invisible(dtype, anchored):
    """Rows (first layer) and column blocks (deeper layers) are split across threads without
    changing any sum's order, and no sum goes through BLAS (whose blocking depends on the thread
    count): 1, 2, 3 and 4 threads give the same bits, under every ISA variant (conftest)."""
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 4):
            torch.set_num_threads(n)
            params, x, y, anchors, importance = _mnist_like(dtype)
            if anchored:
                F.mlp_prox_steps_(params, x, y, anchors, importance, 0.15, 3.0)
            else:
                F.mlp_prox_steps_(params, x, y, None, None, 0.15, 0.0)
            results.append(params)
    finally:
        torch.set_num_threads(threads)
    for n, other in zip((2, 3, 4), results[1:]):
        for i, (a, b) in enumerate(zip(results[0], other)):
            assert torch.equal(a, b), f"params[{i}] with {n} threads differs from 1 thread by {(a - b).abs().max()}"


def test_runs_under_the_parametrised_isa(cpu_isa):
    """The conftest runs this module under every ISA the CPU supports; the kernels do use it."""
    assert cpu_isa in F.supported_cpu_isas()
    assert F.cpu_isa() == cpu_isa


def test_without_anchors_is_plain_sgd_and_prox_zero_matches_it():
    """anchors=None (prox=0) is k SGD steps; anchors with prox=0 are the same steps."""
    params, x, y, anchors, importance = _mnist_like(torch.float64, k=5)
    plain, anchored = [p.clone() for p in params], [p.clone() for p in params]
    F.mlp_prox_steps_(plain, x, y, None, None, 0.1, 0.0)
    F.mlp_prox_steps_(anchored, x, y, anchors, importance, 0.1, 0.0)
    for a, b in zip(plain, anchored):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert not all(torch.equal(a, p) for a, p in zip(plain, params))


def test_strong_prox_pins_params_to_anchors():
    """prox*h -> inf: every step lands on theta0 (Eq. 21), whatever the gradient."""
    params, x, y, anchors, importance = _mnist_like(torch.float64, k=3)
    F.mlp_prox_steps_(params, x, y, anchors, [torch.ones_like(h) for h in importance], 0.15, 1e12)
    for p, a in zip(params, anchors):
        torch.testing.assert_close(p, a, rtol=1e-9, atol=1e-9)


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        params = [h.t for h in net([6, 5, 3], dtype, gen, ["contig"] * 4)]
        anchors = [p.clone() for p in params]
        importance = [p.abs() for p in params]
        x, y = torch.randn(4, 6, dtype=dtype), torch.tensor([0, 2, 1, 2])
        for args in ((params, x, y, anchors, importance, 0.1, 0.5), (params, x, y, None, None, 0.1, 0.0)):
            opcheck(torch.ops.fastcl.mlp_prox_steps_.default, args,
                    test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                "test_aot_dispatch_dynamic"))


def test_bumps_the_version_counter_of_params_only():
    params, x, y, anchors, importance = _mnist_like(k=2)
    versions = [t._version for t in params + anchors + importance + [x]]
    F.mlp_prox_steps_(params, x, y, anchors, importance, 0.1, 1.0)
    after = [t._version for t in params + anchors + importance + [x]]
    assert all(a > b for a, b in zip(after[:6], versions[:6]))
    assert after[6:] == versions[6:]


# --------------------------------------------------------------------------- bad input
def _small():
    gen = torch.Generator().manual_seed(3)
    params = [h.t for h in net([4, 3, 2], torch.float32, gen, ["contig"] * 4)]
    return dict(params=params, x=torch.randn(2, 4), y=torch.tensor([0, 1]),
                anchors=[p.clone() for p in params], importance=[p.abs() for p in params], lr=0.1, prox=0.5)


def _bad_cases():
    def case(name, exc, match, **change):
        return pytest.param(change, exc, match, id=name)

    p = _small()["params"]
    plain = dict(anchors=None, importance=None, prox=0.0)  # structure errors without anchors to match
    yield case("lr<0", ValueError, "lr must be >= 0", lr=-0.1)
    yield case("prox=nan", ValueError, "prox must not be nan", prox=math.nan)
    yield case("prox>0 without anchors", ValueError, "needs anchors and importance", anchors=None, importance=None)
    yield case("anchors only", ValueError, "both be given or both be None", importance=None)
    yield case("odd params", ValueError, "an even, nonzero number", params=p[:3], **plain)
    yield case("no params", ValueError, "an even, nonzero number", params=[], **plain)
    yield case("W not 2-d", ValueError, r"params\[0\] \(W_1\) must be a matrix", params=[p[0].flatten()] + p[1:], **plain)
    yield case("bias shape", ValueError, r"params\[1\] \(b_1\) has shape", params=[p[0], p[1][:2]] + p[2:], **plain)
    yield case("chain", ValueError, r"params\[2\] \(W_2\) has shape \(2, 3\); expected 4 inputs",
               params=[torch.zeros(4, 4), torch.zeros(4)] + p[2:], **plain)
    yield case("half", TypeError, "takes float32 or float64", params=[t.half() for t in p], anchors=None,
               importance=None, prox=0.0, x=torch.randn(2, 4).half())
    yield case("x features", ValueError, "5 features per example; W_1 expects 4", x=torch.randn(2, 5))
    yield case("x dtype", TypeError, "x has dtype torch.float64", x=torch.randn(2, 4, dtype=torch.float64))
    yield case("y dtype", ValueError, "y must be an int64 vector of length 2", y=torch.tensor([0, 1], dtype=torch.int32))
    yield case("y length", ValueError, "y must be an int64 vector of length 2", y=torch.tensor([0]))
    yield case("y range", ValueError, r"y must hold labels in \[0, 2\), got values in \[0, 2\]", y=torch.tensor([0, 2]))
    yield case("y negative", ValueError, r"y must hold labels in \[0, 2\), got values in \[-1, 1\]", y=torch.tensor([1, -1]))
    yield case("anchors shape", ValueError, r"anchors\[0\] has shape", anchors=[torch.zeros(3, 5)] + p[1:])
    yield case("importance dtype", TypeError, r"importance\[1\] has dtype torch.float64",
               importance=[p[0].abs(), p[1].double()] + [t.abs() for t in p[2:]])


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("change,exc,match", list(_bad_cases()))
def test_bad_input_is_rejected_and_changes_nothing(impl, change, exc, match):
    args = {**_small(), **change}
    before = [t.clone() for t in args["params"]]
    fn = F.mlp_prox_steps_ if impl == "fused" else R.mlp_prox_steps_
    with pytest.raises(exc, match=match):
        fn(**args)
    for t, b in zip(args["params"], before):
        assert_same(t, b, "params of a rejected call")


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("what", ["anchors is params", "importance is params", "x is a view of W_1"])
def test_params_sharing_memory_with_an_input_is_rejected(impl, what):
    """The inputs are read at every step while params change: no aliasing at all, not even
    the in-place aliasing that prox_sgd_ accepts."""
    args = _small()
    p = args["params"]
    if what == "anchors is params":
        args["anchors"] = p
    elif what == "importance is params":
        args["importance"] = p
    else:
        args["x"] = p[0][:2]  # [2, 4]: rows of W_1
    before = [t.clone() for t in p]
    fn = F.mlp_prox_steps_ if impl == "fused" else R.mlp_prox_steps_
    with pytest.raises(ValueError, match="must not share memory with any other argument"):
        fn(**args)
    for t, b in zip(p, before):
        assert_same(t, b, "params of a rejected call")


def test_anchors_may_alias_importance_and_each_other():
    """Read-only inputs may share memory (no write depends on their order)."""
    args = _small()
    args["importance"] = [a.abs() for a in args["anchors"]]
    shared = [a.abs() for a in args["anchors"]]
    want = [t.clone() for t in args["params"]]
    R.mlp_prox_steps_(want, args["x"], args["y"], shared, shared, 0.1, 0.5)
    F.mlp_prox_steps_(args["params"], args["x"], args["y"], shared, shared, 0.1, 0.5)
    for got, ref in zip(args["params"], want):
        torch.testing.assert_close(got, ref, **TOL[torch.float32])
