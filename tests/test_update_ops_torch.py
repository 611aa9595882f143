"""The update ops inside PyTorch's machinery: opcheck (schema, autograd registration, fake
kernels, AOT dispatch with dynamic shapes), autograd of prox_sgd (gradcheck, gradgradcheck,
a second-order MAML meta-gradient), vmap of trajectory_shift_, torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import fastcl.ops as F
from fastcl.ops import reference as R
from update_ops_helpers import assert_matches, clone_lists

pytestmark = pytest.mark.skipif(F.backend() == "reference", reason="the extension is not built")

OPS = torch.ops.fastcl if F.backend() != "reference" else None


def rnd(*shape, dtype=torch.float32, nonneg=False, requires_grad=False):
    t = torch.randn(shape, dtype=dtype)
    if nonneg:
        t = t.abs()
    return t.requires_grad_(requires_grad)


SHAPES = [(3, 4), (5,), (), (2, 0, 3), (2, 3, 2)]


def lst(dtype=torch.float32, nonneg=False, lead=(), requires_grad=False, shapes=SHAPES):
    return [rnd(*lead, *s, dtype=dtype, nonneg=nonneg, requires_grad=requires_grad) for s in shapes]


# --------------------------------------------------------------------------- opcheck
def opcheck_cases():
    torch.manual_seed(0)
    cases = []
    for dtype in (torch.float32, torch.float64):
        cases += [
            ("prox_sgd_", (lst(dtype), lst(dtype), lst(dtype), lst(dtype, True), 0.1, 0.5)),
            ("prox_sgd_", (lst(dtype), lst(dtype), None, None, 0.1, 0.0)),
            ("prox_sgd", (lst(dtype), lst(dtype), lst(dtype), lst(dtype, True), 0.1, 0.5)),
            ("prox_sgd", (lst(dtype), lst(dtype), None, None, 0.1, 0.0)),
            ("taylor_importance_", (lst(dtype, True), lst(dtype), lst(dtype), 0.9)),
            ("emcl_meta_step_", (lst(dtype), lst(dtype), lst(dtype, True), lst(dtype, True), lst(dtype),
                                 0.5, 0.9, 0.1, 0, 0.01, 1e-3)),
            ("emcl_meta_step_", (lst(dtype), lst(dtype), lst(dtype, True), lst(dtype, True), lst(dtype),
                                 0.5, 0.9, 0.1, 1, 0.01, 1e-3)),
            ("trajectory_shift_", (lst(dtype), lst(dtype, lead=(3,)), 0.3, True)),
            ("trajectory_shift_", (lst(dtype), lst(dtype, lead=(1,)), 0.3, False)),
        ]
    # requires_grad inputs: the autograd registration of prox_sgd is exercised by opcheck
    cases.append(("prox_sgd", (lst(torch.float64, requires_grad=True), lst(torch.float64, requires_grad=True),
                               lst(torch.float64, requires_grad=True),
                               lst(torch.float64, True, requires_grad=True), 0.1, 0.5)))
    cases.append(("prox_sgd", (lst(torch.float64, requires_grad=True), lst(torch.float64, requires_grad=True),
                               None, None, 0.1, 0.0)))
    return cases


@pytest.mark.parametrize("name,args", opcheck_cases(),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_opcheck(name, args):
    opcheck(getattr(OPS, name).default, args,
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                        "test_aot_dispatch_dynamic"))


# --------------------------------------------------------------------------- autograd of prox_sgd
def prox_inputs(with_anchors, shapes=((2, 3), (4,), ())):
    torch.manual_seed(1)
    mk = lambda nonneg=False: [rnd(*s, dtype=torch.float64, nonneg=nonneg, requires_grad=True) for s in shapes]  # noqa: E731
    p, g = mk(), mk()
    if not with_anchors:
        return p, g, None, None
    return p, g, mk(), [(h + 0.1).detach().requires_grad_() for h in mk(True)]


def flat_prox(n, with_anchors, lr, prox):
    def f(*xs):
        p, g = list(xs[:n]), list(xs[n:2 * n])
        a = list(xs[2 * n:3 * n]) if with_anchors else None
        h = list(xs[3 * n:]) if with_anchors else None
        return tuple(F.prox_sgd(p, g, a, h, lr, prox))
    return f


@pytest.mark.parametrize("with_anchors", [True, False])
def test_prox_sgd_gradcheck_gradgradcheck(with_anchors):
    p, g, a, h = prox_inputs(with_anchors)
    xs = p + g + (a + h if with_anchors else [])
    prox = 0.7 if with_anchors else 0.0
    f = flat_prox(len(p), with_anchors, 0.3, prox)
    assert torch.autograd.gradcheck(f, xs)
    assert torch.autograd.gradgradcheck(f, xs)


@pytest.mark.parametrize("with_anchors", [True, False])
def test_prox_sgd_grads_match_reference(with_anchors):
    """The registered backward equals autograd through the reference expression."""
    p, g, a, h = prox_inputs(with_anchors)
    xs = p + g + (a + h if with_anchors else [])
    prox = 0.7 if with_anchors else 0.0
    outs_f = F.prox_sgd(p, g, a, h, 0.3, prox)
    outs_r = R.prox_sgd(p, g, a, h, 0.3, prox)
    w = [torch.randn_like(o) for o in outs_f]
    gf = torch.autograd.grad(outs_f, xs, w, allow_unused=True)
    gr = torch.autograd.grad(outs_r, xs, w, allow_unused=True)
    for x, y in zip(gf, gr):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def _maml_meta_grad(step, with_anchors, steps=2):
    """Meta-gradient of a 2-step second-order inner loop (a small MLP regression) wrt theta_0
    and the importance h: the inner grads are taken with create_graph=True and flow through
    `step` (fastcl.ops.prox_sgd or reference.prox_sgd)."""
    torch.manual_seed(3)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    xq, yq = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    theta0 = [torch.randn(8, 4, dtype=torch.float64, requires_grad=True),
              torch.randn(8, dtype=torch.float64, requires_grad=True),
              torch.randn(1, 8, dtype=torch.float64, requires_grad=True),
              torch.randn(1, dtype=torch.float64, requires_grad=True)]
    h = [torch.rand_like(t).requires_grad_() for t in theta0]

    def loss(w, xx, yy):
        hid = torch.tanh(xx @ w[0].T + w[1])
        return ((hid @ w[2].T + w[3] - yy) ** 2).mean()

    w = theta0
    for _ in range(steps):
        grads = torch.autograd.grad(loss(w, x, y), w, create_graph=True)
        if with_anchors:
            w = step(w, list(grads), theta0, h, 0.1, 0.5)
        else:
            w = step(w, list(grads), None, None, 0.1, 0.0)
    inputs = theta0 + (h if with_anchors else [])
    return torch.autograd.grad(loss(w, xq, yq), inputs)


@pytest.mark.parametrize("with_anchors", [True, False])
def test_maml_second_order_meta_gradient(with_anchors):
    fused = _maml_meta_grad(F.prox_sgd, with_anchors)
    ref = _maml_meta_grad(R.prox_sgd, with_anchors)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # second order really matters here: the first-order meta-gradient differs
    fo = _maml_meta_grad(lambda w, g, a, h, lr, prox: R.prox_sgd(w, [x.detach() for x in g], a, h, lr, prox),
                         with_anchors)
    assert any(not torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(fo, ref))


# --------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trajectory_shift_vmap_equals_loop(shift, T, dtype):
    """B independent meta-learners: vmap of the fused op over [B, *S] phis and [B, T, *S] thetas
    equals the reference applied to each b."""
    torch.manual_seed(4)
    B = 5
    shapes = [(3, 4), (), (0, 2), (7,)]
    phi = [torch.randn(B, *s, dtype=dtype) for s in shapes]
    thetas = [torch.randn(B, T, *s, dtype=dtype) for s in shapes]
    phi_r, thetas_r = clone_lists(phi, thetas)

    def f(ph, th):
        F.trajectory_shift_(list(ph), list(th), 0.4, shift)
        return ph, th

    torch.func.vmap(f)(tuple(phi), tuple(thetas))
    for b in range(B):
        R.trajectory_shift_([p[b] for p in phi_r], [t[b] for t in thetas_r], 0.4, shift)
    for i in range(len(shapes)):
        scale = phi_r[i].double().abs() + thetas_r[i].double().abs().amax(1) + 1
        assert_matches(phi[i], phi_r[i], scale=scale, k=2 * (T + 3), what=f"phi[{i}]")
        assert_matches(thetas[i], thetas_r[i], scale=thetas_r[i].double().abs() + scale.unsqueeze(1),
                       k=2 * (T + 3), what=f"thetas[{i}]")


def test_trajectory_shift_vmap_batch_dim_not_first():
    """in_dims other than 0: the batch dimension in the middle of the tensors."""
    torch.manual_seed(5)
    B, T = 4, 3
    phi = torch.randn(6, B)  # batched along dim 1
    thetas = torch.randn(T, B, 6)  # batched along dim 1, T leading per learner
    phi_r, thetas_r = phi.clone(), thetas.clone()

    def f(ph, th):
        F.trajectory_shift_([ph], [th], 0.25, True)
        return ph

    torch.func.vmap(f, in_dims=(1, 1))(phi, thetas)
    for b in range(B):
        R.trajectory_shift_([phi_r[:, b]], [thetas_r[:, b]], 0.25, True)
    torch.testing.assert_close(phi, phi_r, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(thetas, thetas_r, rtol=1e-6, atol=1e-6)


def test_trajectory_shift_vmap_unbatched_phi_is_rejected():
    phi = torch.randn(3)
    thetas = torch.randn(4, 2, 3)

    def f(th):
        F.trajectory_shift_([phi], [th], 0.25, False)
        return th

    with pytest.raises(ValueError, match="phi must be batched"):
        torch.func.vmap(f)(thetas)


# --------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("impl", [F, R], ids=["fused", "reference"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_inplace_ops(backend, impl):
    """fullgraph: the fused ops trace through their fake kernels; the references (the fallback
    without the extension) trace too."""
    torch._dynamo.reset()

    def step(params, grads, anchors, importance, phi, thetas):
        impl.taylor_importance_(importance, grads, params, 0.9)
        impl.prox_sgd_(params, grads, anchors, importance, 0.1, 0.5)
        impl.trajectory_shift_(phi, thetas, 0.3, True)
        return [p * 2 for p in params]

    torch.manual_seed(6)
    shapes = [(3, 4), (5,), ()]
    args = (lst(shapes=shapes), lst(shapes=shapes), lst(shapes=shapes), lst(nonneg=True, shapes=shapes),
            lst(shapes=shapes), lst(lead=(2,), shapes=shapes))
    ref_args = clone_lists(*args)
    out = torch.compile(step, backend=backend, fullgraph=True)(*args)
    R.taylor_importance_(ref_args[3], ref_args[1], ref_args[0], 0.9)
    R.prox_sgd_(ref_args[0], ref_args[1], ref_args[2], ref_args[3], 0.1, 0.5)
    R.trajectory_shift_(ref_args[4], ref_args[5], 0.3, True)
    for got, want in zip(args, ref_args):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, [p * 2 for p in ref_args[0]], rtol=1e-6, atol=1e-6)


def test_compile_rejects_bad_input_at_trace_time():
    """The fake kernels check their arguments: tracing a call with mismatched shapes raises the
    same ValueError as eager (not a silent graph that fails later or writes nothing)."""
    torch._dynamo.reset()

    def step(params, grads):
        F.prox_sgd_(params, grads, None, None, 0.1, 0.0)
        return params[0] + 1

    with pytest.raises(Exception, match=r"grads\[0\] has shape"):
        torch.compile(step, backend="aot_eager", fullgraph=True)([torch.randn(3)], [torch.randn(4)])


def test_trajectory_shift_vmap_shared_thetas_without_shift():
    """shift=False reads thetas only: one unbatched trajectory shared by all B meta-learners."""
    torch.manual_seed(7)
    B, T = 3, 4
    phi = torch.randn(B, 2, 5)
    thetas = torch.randn(T, 2, 5)
    phi_r, thetas_before = phi.clone(), thetas.clone()

    def f(ph):
        F.trajectory_shift_([ph], [thetas], 0.5, False)
        return ph

    torch.func.vmap(f)(phi)
    for b in range(B):
        R.trajectory_shift_([phi_r[b]], [thetas_before.clone()], 0.5, False)
    torch.testing.assert_close(phi, phi_r, rtol=1e-6, atol=1e-6)
    assert torch.equal(thetas, thetas_before)


# --------------------------------------------------------------------------- version counters
WRITTEN = {
    "prox_sgd_": ["params"],
    "taylor_importance_": ["importance"],
    "emcl_meta_step_": ["params", "importance", "meta_lrs"],
    "trajectory_shift_": ["phi", "thetas"],
}


def version_args(op, shift=True):
    torch.manual_seed(8)
    if op == "prox_sgd_":
        return dict(params=lst(), grads=lst(), anchors=lst(), importance=lst(nonneg=True), lr=0.1, prox=0.5)
    if op == "taylor_importance_":
        return dict(importance=lst(nonneg=True), grads=lst(), params=lst(), decay=0.9)
    if op == "emcl_meta_step_":
        return dict(params=lst(), fast_params=lst(), importance=lst(nonneg=True), meta_lrs=lst(nonneg=True),
                    grads=lst(), lam=0.5, decay=0.9, r=0.1, lr_mode=1, alpha0=0.01, eps=1e-3)
    return dict(phi=lst(), thetas=lst(lead=(2,)), meta_lr=0.3, shift=shift)


@pytest.mark.parametrize("impl", [F, R], ids=["fused", "reference"])
@pytest.mark.parametrize("op,shift", [(op, True) for op in WRITTEN] + [("trajectory_shift_", False)])
def test_version_counters(impl, op, shift):
    """The autograd version counter of every written tensor is bumped (so autograd detects a
    tensor saved for backward that the op modified); read-only tensors keep theirs."""
    args = version_args(op, shift)
    written = set(WRITTEN[op]) - ({"thetas"} if not shift else set())
    before = {k: [t._version for t in v] for k, v in args.items() if isinstance(v, list)}
    getattr(impl, op)(**args)
    for k, vs in before.items():
        after = [t._version for t in args[k]]
        if k in written:
            assert all(a > b for a, b in zip(after, vs)), (k, vs, after)
        else:
            assert after == vs, (k, vs, after)


@pytest.mark.parametrize("impl", [F, R], ids=["fused", "reference"])
def test_backward_detects_inplace_update_of_saved_tensor(impl):
    x = torch.randn(3, requires_grad=True)
    w = x * 1
    loss = (w * w).sum()  # saves w
    with torch.no_grad():  # in grad mode the update of a tensor that requires grad is refused
        impl.prox_sgd_([w], [torch.ones(3)], None, None, 0.1, 0.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_rejected_call_keeps_versions():
    p, g = lst(), lst()
    before = [t._version for t in p]
    with pytest.raises(ValueError):
        F.prox_sgd_(p, g, None, None, -1.0, 0.0)
    with pytest.raises(ValueError):
        F.prox_sgd_(p, g[:2], None, None, 0.1, 0.0)
    assert [t._version for t in p] == before


@pytest.mark.parametrize("impl", [F, R], ids=["fused", "reference"])
def test_inference_tensor_outside_inference_mode_is_rejected_unchanged(impl):
    with torch.inference_mode():
        p = [torch.randn(3), torch.randn(4)]
    g = [torch.randn(3), torch.randn(4)]
    before = [t.clone() for t in p]
    with pytest.raises(ValueError, match=r"params\[0\] is an inference tensor"):
        impl.prox_sgd_(p, g, None, None, 0.1, 0.0)
    for t, b in zip(p, before):
        assert torch.equal(t, b)
    with torch.inference_mode():  # inside inference mode it is an ordinary update
        impl.prox_sgd_(p, g, None, None, 0.1, 0.0)
        for t, b, gg in zip(p, before, g):
            torch.testing.assert_close(t, b - 0.1 * gg)


# --------------------------------------------------------------------------- torch.func
def _inner_loss(impl):
    """theta0 -> query loss after a 2-step proximal inner loop on one task (torch.func style)."""
    def loss(w, x, y):
        return ((torch.tanh(x @ w[0].T + w[1]) @ w[2].T - y) ** 2).mean()

    def adapted_loss(theta0, x, y, xq, yq):
        h = [torch.ones_like(t) for t in theta0]
        w = list(theta0)
        for _ in range(2):
            g = torch.func.grad(loss)(w, x, y)
            w = impl.prox_sgd(w, list(g), list(theta0), h, 0.1, 0.5)
        return loss(w, xq, yq)

    return adapted_loss


def _task_batch(B=3):
    torch.manual_seed(9)
    theta0 = [torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64),
              torch.randn(1, 6, dtype=torch.float64)]
    data = [torch.randn(B, 10, 4, dtype=torch.float64), torch.randn(B, 10, 1, dtype=torch.float64),
            torch.randn(B, 5, 4, dtype=torch.float64), torch.randn(B, 5, 1, dtype=torch.float64)]
    return theta0, data


def test_prox_sgd_under_torch_func_grad_and_vmap():
    """Batched second-order MAML the torch.func way: vmap over tasks of grad of an inner loop
    that calls prox_sgd (which, under torch.func transforms, runs as its reference)."""
    theta0, data = _task_batch()
    meta = torch.func.vmap(torch.func.grad(_inner_loss(F)), in_dims=(None, 0, 0, 0, 0))
    got = meta(theta0, *data)
    want = torch.func.vmap(torch.func.grad(_inner_loss(R)), in_dims=(None, 0, 0, 0, 0))(theta0, *data)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and per task, with the fused op under plain autograd
    for b in range(data[0].shape[0]):
        th = [t.clone().requires_grad_() for t in theta0]
        loss = _inner_loss_autograd(th, *(d[b] for d in data))
        g = torch.autograd.grad(loss, th)
        for x, y in zip(g, got):
            torch.testing.assert_close(x, y[b], rtol=1e-10, atol=1e-12)


def _inner_loss_autograd(theta0, x, y, xq, yq):
    def loss(w, xx, yy):
        return ((torch.tanh(xx @ w[0].T + w[1]) @ w[2].T - yy) ** 2).mean()

    h = [torch.ones_like(t) for t in theta0]
    w = list(theta0)
    for _ in range(2):
        g = torch.autograd.grad(loss(w, x, y), w, create_graph=True)
        w = F.prox_sgd(w, list(g), list(theta0), h, 0.1, 0.5)
    return loss(w, xq, yq)


@pytest.mark.parametrize("op", ["prox_sgd_", "taylor_importance_", "emcl_meta_step_"])
def test_inplace_ops_under_vmap(op):
    """vmap over a batch of models: the in-place ops without a vmap rule run as their
    references there, and equal a loop of the reference over the batch."""
    torch.manual_seed(10)
    B = 4
    n_lists = {"prox_sgd_": 4, "taylor_importance_": 3, "emcl_meta_step_": 5}[op]
    lists = [[torch.rand(B, 3, 2) + 0.1, torch.rand(B, 5) + 0.1] for _ in range(n_lists)]
    scalars = {"prox_sgd_": (0.1, 0.5), "taylor_importance_": (0.9,),
               "emcl_meta_step_": (0.5, 0.9, 0.1, 1, 0.01, 1e-3)}[op]
    ref = clone_lists(*lists)

    def f(*ls):
        getattr(F, op)(*[list(x) for x in ls], *scalars)
        return ls[0]

    torch.func.vmap(f)(*[tuple(x) for x in lists])
    for b in range(B):
        getattr(R, op)(*[[t[b] for t in x] for x in ref], *scalars)
    for got, want in zip(lists, ref):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
