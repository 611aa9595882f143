"""The CUDA kernels (csrc/cuda) against the references, on a GPU; skipped elsewhere.

These call ``torch.ops.fastcl.*`` directly on CUDA tensors, so they exercise the torch glue
(csrc/cuda/glue.cpp: checks, staging of strided tensors, streams, generators) as well as the
kernels. The standalone kernel test without torch is csrc/tests/test_cuda_kernels.cu (CTest).
"""

from __future__ import annotations

import os

import pytest
import torch

from fastcl.ops import reference as ref
from fastcl.ops._load import HAVE_EXT, cuda_built

_CAN_RUN = HAVE_EXT and torch.cuda.is_available() and cuda_built()
_WHY = (f"needs a GPU and fastcl built with its CUDA kernels (extension loaded: {HAVE_EXT}, CUDA device: "
        f"{torch.cuda.is_available()}, CUDA kernels built: {HAVE_EXT and cuda_built()})")
if not _CAN_RUN and os.environ.get("FASTCL_REQUIRE_CUDA", "") not in ("", "0"):
    # The GPU check (tests/gpu_check.sh) sets it: there a skip would hide a broken CUDA build.
    raise RuntimeError(f"FASTCL_REQUIRE_CUDA is set but this module cannot run: {_WHY}")
pytestmark = pytest.mark.skipif(not _CAN_RUN, reason=_WHY)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-13),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}
# empty, scalar, odd, several 8192-element chunks, and a strided (transposed) one
SHAPES = [(0,), (), (7,), (3, 5), (40000,), (129, 65)]


def _ops():
    return torch.ops.fastcl


def _lists(k, dtype, low=-2.0, high=2.0, shapes=SHAPES, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(k):
        lst = []
        for j, s in enumerate(shapes):
            t = torch.empty(s, dtype=torch.float64).uniform_(low, high, generator=g)
            t = t.to(device="cuda", dtype=dtype)
            if j == len(shapes) - 1:
                t = t.t().contiguous().t()  # same values, transposed strides
            lst.append(t)
        out.append(lst)
    return out


def _clone(lst):
    return [t.clone() for t in lst]


def _close(got, want, dtype):
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float() if dtype != torch.float64 else a,
                                   b.float() if dtype != torch.float64 else b, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("anchored", [True, False])
def test_prox_sgd(dtype, anchored):
    p, g, a = _lists(3, dtype)
    (h,) = _lists(1, dtype, 0.0, 3.0, seed=1)
    anchors, imp, prox = (a, h, 0.7) if anchored else (None, None, 0.0)
    want = ref.prox_sgd(p, g, anchors, imp, 0.1, prox)
    got = _ops().prox_sgd(p, g, anchors, imp, 0.1, prox)
    _close(got, want, dtype)
    q = _clone(p)
    _ops().prox_sgd_(q, g, anchors, imp, 0.1, prox)
    _close(q, want, dtype)
    assert q[-1].stride() == p[-1].stride()  # written back into the strided tensor


@pytest.mark.parametrize("dtype", DTYPES)
def test_prox_sgd_aliased_grads(dtype):
    (p,) = _lists(1, dtype)
    want = ref.prox_sgd(p, p, None, None, 0.25, 0.0)
    _ops().prox_sgd_(p, p, None, None, 0.25, 0.0)
    _close(p, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_taylor_importance(dtype):
    g, p = _lists(2, dtype)
    (h,) = _lists(1, dtype, 0.0, 3.0, seed=2)
    want = _clone(h)
    ref.taylor_importance_(want, g, p, 0.9)
    _ops().taylor_importance_(h, g, p, 0.9)
    _close(h, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lr_mode", [0, 1, 2])
def test_emcl_meta_step(dtype, lr_mode):
    p, pk, g = _lists(3, dtype)
    h, a = _lists(2, dtype, 0.0, 1.0, seed=3)
    wp, wh, wa = _clone(p), _clone(h), _clone(a)
    ref.emcl_meta_step_(wp, pk, wh, wa, g, 0.5, 0.9, 0.3, lr_mode, 0.05, 1e-3)
    _ops().emcl_meta_step_(p, pk, h, a, g, 0.5, 0.9, 0.3, lr_mode, 0.05, 1e-3)
    _close(p, wp, dtype)
    _close(h, wh, dtype)
    _close(a, wa, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [True, False])
def test_trajectory_shift(dtype, shift):
    (phi,) = _lists(1, dtype)
    gen = torch.Generator(device="cpu").manual_seed(4)
    thetas = [torch.rand((1 + i % 3, *t.shape), generator=gen, dtype=torch.float64)
              .to("cuda", dtype) for i, t in enumerate(phi)]
    wphi, wth = _clone(phi), _clone(thetas)
    ref.trajectory_shift_(wphi, wth, 0.3, shift)
    _ops().trajectory_shift_(phi, thetas, 0.3, shift)
    _close(phi, wphi, dtype)
    _close(thetas, wth, dtype)


def test_many_tensors_take_several_launches():
    shapes = [(1 + (i * 37) % 300,) for i in range(250)]
    p, g, a = _lists(3, torch.float32, shapes=shapes)
    (h,) = _lists(1, torch.float32, 0.0, 3.0, shapes=shapes, seed=5)
    want = ref.prox_sgd(p, g, a, h, 0.1, 0.7)
    _ops().prox_sgd_(p, g, a, h, 0.1, 0.7)
    _close(p, want, torch.float32)


def test_rejected_call_writes_nothing():
    p, g = _lists(2, torch.float32)
    before = _clone(p)
    bad = _clone(g)
    bad[1] = bad[1].cpu()
    with pytest.raises(ValueError):
        _ops().prox_sgd_(p, bad, None, None, 0.1, 0.0)
    with pytest.raises(ValueError):
        _ops().prox_sgd_(p, g, None, None, -1.0, 0.0)
    for a, b in zip(p, before):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- MLP inner loop
# against the reference in the same dtype on the GPU (cuBLAS sums in another order; k steps)
MLP_TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
}


def _mlp(widths, dtype, seed):
    """[W_1, b_1, ..., W_L, b_L] on the GPU, uniform of scale 1/sqrt(fan in)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        scale = max(n_in, 1) ** -0.5
        for shape in ((n_out, n_in), (n_out,)):
            t = torch.empty(shape, dtype=torch.float64).uniform_(-scale, scale, generator=g)
            params.append(t.to("cuda", dtype))
    return params


def _like(params, low, high, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.empty(t.shape, dtype=torch.float64).uniform_(low, high, generator=g).to("cuda", t.dtype)
            for t in params]


def _batch(widths, k, dtype, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.empty(k, widths[0], dtype=torch.float64).uniform_(-1.0, 1.0, generator=g).to("cuda", dtype)
    y = torch.randint(0, widths[-1], (k,), generator=g).cuda()
    return x, y


def _mlp_args(widths, dtype, anchored):
    """anchors, importance, prox of a call with or without the prox term."""
    if not anchored:
        return None, None, 0.0
    anchors = _mlp(widths, dtype, seed=11)  # theta_0 of the scale of the weights
    return anchors, _like(anchors, 0.0, 3.0, seed=12), 0.7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("anchored", [True, False])
# the small MLP; an MNIST-sized one; more hidden units and classes than threads in a block
@pytest.mark.parametrize("widths, k", [((7, 5, 4, 3), 4), ((784, 100, 100, 10), 10), ((20, 300, 260), 3)])
def test_mlp_prox_steps(dtype, anchored, widths, k):
    p = _mlp(widths, dtype, seed=9)
    x, y = _batch(widths, k, dtype, seed=10)
    anchors, importance, prox = _mlp_args(widths, dtype, anchored)
    want = _clone(p)
    ref.mlp_prox_steps_(want, x, y, anchors, importance, 0.3, prox)
    _ops().mlp_prox_steps_(p, x, y, anchors, importance, 0.3, prox)
    for got, w in zip(p, want):
        torch.testing.assert_close(got, w, **MLP_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("anchored", [True, False])
def test_mlp_prox_steps_strided(dtype, anchored):
    widths, k = (12, 9, 6, 4), 5
    p = _mlp(widths, dtype, seed=14)
    p[2] = p[2].t().contiguous().t()  # W_2: same values, transposed strides
    strides = [t.stride() for t in p]
    g = torch.Generator(device="cpu").manual_seed(15)
    # x [k, 3, 4] (12 features per example) and y, both non-contiguous
    x = torch.rand(k, 4, 3, generator=g, dtype=torch.float64).to("cuda", dtype).transpose(1, 2)
    y = torch.randint(0, widths[-1], (2 * k,), generator=g).cuda()[::2]
    anchors, importance, prox = _mlp_args(widths, dtype, anchored)
    if anchored:
        anchors[0] = anchors[0].t().contiguous().t()
    want = _clone(p)
    ref.mlp_prox_steps_(want, x, y, anchors, importance, 0.3, prox)
    _ops().mlp_prox_steps_(p, x, y, anchors, importance, 0.3, prox)
    for got, w in zip(p, want):
        torch.testing.assert_close(got, w, **MLP_TOL[dtype])
    assert [t.stride() for t in p] == strides  # written back into the strided W_2


def test_mlp_prox_steps_rejected_call_writes_nothing():
    widths = (7, 5, 3)
    p = _mlp(widths, torch.float32, seed=16)
    before = _clone(p)
    x, y = _batch(widths, 4, torch.float32, seed=17)
    for bad in (3, -1):  # y out of [0, n_L)
        yb = y.clone()
        yb[2] = bad
        with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\)"):
            _ops().mlp_prox_steps_(p, x, yb, None, None, 0.1, 0.0)
    _ops().mlp_prox_steps_(p, x[:0], y[:0], None, None, 0.1, 0.0)  # k = 0: nothing to do
    for a, b in zip(p, before):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- memory
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_ring_insert_equals_reference(dtype):
    gen = torch.Generator(device="cpu").manual_seed(6)
    num_tasks, num_classes, m = 3, 4, 5
    data = torch.zeros(num_tasks * num_classes * m, 2, 3, dtype=dtype, device="cuda")
    counts = torch.zeros(num_tasks, num_classes, dtype=torch.int64, device="cuda")
    wdata, wcounts = data.clone(), counts.clone()
    for step in range(30):
        b = int(torch.randint(0, 40, (1,), generator=gen))
        x = (torch.rand(b, 2, 3, generator=gen) * 100).to("cuda", dtype)
        y = torch.randint(0, num_classes, (b,), generator=gen).cuda()
        task = step % num_tasks
        ref.ring_insert_(wdata, wcounts, x, y, task)
        _ops().ring_insert_(data, counts, x, y, task)
        assert torch.equal(counts, wcounts)
        assert torch.equal(data, wdata)
    with pytest.raises(ValueError):
        _ops().ring_insert_(data, counts, torch.zeros(1, 2, 3, dtype=dtype, device="cuda"),
                            torch.tensor([num_classes], device="cuda"), 0)
    assert torch.equal(data, wdata)


def test_ring_sample_equals_reference():
    gen = torch.Generator(device="cpu").manual_seed(7)
    for it in range(50):
        counts = torch.randint(0, 9, (4, 300), generator=gen).cuda()
        tasks = sorted({int(t) for t in torch.randint(0, 4, (2,), generator=gen)})
        n = int(torch.randint(0, 3000, (1,), generator=gen))
        g1 = torch.Generator(device="cuda").manual_seed(it)
        g2 = torch.Generator(device="cuda").manual_seed(it)
        want = ref.ring_sample(counts, 6, tasks, n, g1)
        got = _ops().ring_sample(counts, 6, tasks, n, g2)
        assert torch.equal(got, want)
    with pytest.raises(ValueError):
        _ops().ring_sample(counts, 6, [], 5)


@pytest.mark.parametrize("n_seen", [0, 7, 500])
def test_reservoir_insert_equals_reference(n_seen):
    cap = 40
    gen = torch.Generator(device="cpu").manual_seed(8)
    data = torch.zeros(cap, 3, device="cuda")
    labels = torch.zeros(cap, dtype=torch.int64, device="cuda")
    tasks = torch.zeros(cap, dtype=torch.int64, device="cuda")
    wdata, wlabels, wtasks = data.clone(), labels.clone(), tasks.clone()
    seen = n_seen
    for step in range(20):
        b = 2000 if step == 3 else int(torch.randint(0, 50, (1,), generator=gen))
        x = torch.rand(b, 3, generator=gen).cuda()
        y = torch.randint(0, 10, (b,), generator=gen).cuda()
        g1 = torch.Generator(device="cuda").manual_seed(step)
        g2 = torch.Generator(device="cuda").manual_seed(step)
        want = ref.reservoir_insert_(wdata, wlabels, wtasks, x, y, step % 3, seen, g1)
        got = _ops().reservoir_insert_(data, labels, tasks, x, y, step % 3, seen, g2)
        seen += b
        assert torch.equal(got, want)
        assert torch.equal(data, wdata)
        assert torch.equal(labels, wlabels)
        assert torch.equal(tasks, wtasks)
