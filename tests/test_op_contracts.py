"""The in-place ops keep PyTorch's contracts, in both implementations (the fused ops, called
through fastcl.ops or as torch.ops.fastcl.<op>, and the references):

* autograd: with grad mode on, a written tensor that requires grad (a leaf, or a non-leaf of an
  autograd graph) is refused, naming it, with nothing changed; under torch.no_grad() the call
  proceeds as PyTorch's in-place ops do; version counters of written tensors are bumped;
* every float argument is finite (inf rejected like nan, naming the argument);
* the memory ops' storage shares no memory with x, y or each other (rejected, naming both);
  disjoint views of one storage are accepted.

The refusals, the version counters, inf and the memory overlaps are also checked on CUDA when a
GPU and a CUDA build of the extension are present (DEVICES).
"""

from __future__ import annotations

import math

import pytest
import torch

import fastcl.ops as F
from fastcl.ops import reference as R
from update_ops_helpers import all_tensors, assert_same

HAVE_EXT = F.backend() != "reference"
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason="the extension is not built")


def _direct(op):
    """The fused op called through the dispatcher, bypassing the Python wrapper."""
    return lambda *args: getattr(torch.ops.fastcl, op)(*args)


IMPLS = [pytest.param("fused", id="fused"), pytest.param("reference", id="reference"),
         pytest.param("torch.ops", id="torch.ops", marks=needs_ext)]


def fn(impl, op):
    """The callable of ``op`` for ``impl`` ("fused": the fastcl.ops wrapper, "reference", or
    "torch.ops": the dispatcher directly)."""
    if impl == "torch.ops":
        return _direct(op)
    return getattr(F if impl == "fused" else R, op)


def lst(gen, nonneg=False, lead=()):
    out = [torch.randn((*lead, *s), generator=gen, dtype=torch.float64) for s in ((3, 4), (5,), ())]
    return [t.abs() + 0.1 for t in out] if nonneg else out


DEVICES = ["cpu"] + (["cuda"] if HAVE_EXT and torch.cuda.is_available() and F.cuda_built() else [])


def valid(op, seed=0, device="cpu"):
    """A valid call of ``op`` on ``device``: (positional argument names, {name: value})."""
    names, args = _valid_cpu(op, seed)
    if device != "cpu":
        for k, v in args.items():
            if isinstance(v, torch.Tensor):
                args[k] = v.to(device)
            elif isinstance(v, list):
                args[k] = [t.to(device) for t in v]
            elif isinstance(v, torch.Generator):
                args[k] = torch.Generator(device=device).manual_seed(seed)
    return names, args


def _valid_cpu(op, seed):
    g = torch.Generator().manual_seed(seed)
    if op == "prox_sgd_":
        return ["params", "grads", "anchors", "importance", "lr", "prox"], dict(
            params=lst(g), grads=lst(g), anchors=lst(g), importance=lst(g, True), lr=0.1, prox=0.5)
    if op == "taylor_importance_":
        return ["importance", "grads", "params", "decay"], dict(
            importance=lst(g, True), grads=lst(g), params=lst(g), decay=0.9)
    if op == "emcl_meta_step_":
        return ["params", "fast_params", "importance", "meta_lrs", "grads", "lam", "decay", "r", "lr_mode",
                "alpha0", "eps"], dict(params=lst(g), fast_params=lst(g), importance=lst(g, True),
                                       meta_lrs=lst(g, True), grads=lst(g), lam=0.5, decay=0.9, r=0.1, lr_mode=1,
                                       alpha0=0.01, eps=1e-3)
    if op == "trajectory_shift_":
        return ["phi", "thetas", "meta_lr", "shift"], dict(phi=lst(g), thetas=lst(g, lead=(3,)), meta_lr=0.3,
                                                           shift=True)
    if op == "mlp_prox_steps_":
        shapes = [(5, 4), (5,), (3, 5), (3,)]
        params = [torch.randn(s, generator=g, dtype=torch.float64) * 0.5 for s in shapes]
        return ["params", "x", "y", "anchors", "importance", "lr", "prox"], dict(
            params=params, x=torch.randn(4, 4, generator=g, dtype=torch.float64), y=torch.tensor([0, 2, 1, 2]),
            anchors=[p.clone() for p in params], importance=[torch.rand(s, generator=g, dtype=torch.float64)
                                                             for s in shapes], lr=0.1, prox=0.5)
    if op == "ring_insert_":
        return ["data", "counts", "x", "y", "task"], dict(
            data=torch.randn(2 * 3 * 2, 4, generator=g, dtype=torch.float64),
            counts=torch.tensor([[0, 1, 3], [2, 0, 1]]), x=torch.randn(3, 4, generator=g, dtype=torch.float64),
            y=torch.tensor([0, 2, 2]), task=1)
    if op == "reservoir_insert_":
        return ["data", "labels", "tasks", "x", "y", "task", "n_seen", "generator"], dict(
            data=torch.randn(4, 3, generator=g, dtype=torch.float64), labels=torch.zeros(4, dtype=torch.int64),
            tasks=torch.zeros(4, dtype=torch.int64), x=torch.randn(5, 3, generator=g, dtype=torch.float64),
            y=torch.arange(5), task=1, n_seen=2, generator=torch.Generator().manual_seed(seed))
    raise AssertionError(op)


def call(impl, op, names, args):
    return fn(impl, op)(*[args[n] for n in names])


def snapshot(args):
    ts = all_tensors(args)
    return ts, [t.detach().clone() for t in ts], [t._version for t in ts]


def assert_unchanged(snap, what):
    ts, before, versions = snap
    for i, (t, b) in enumerate(zip(ts, before)):
        assert_same(t, b, f"{what}: tensor {i}")
    assert [t._version for t in ts] == versions, f"{what}: a version counter moved"


# ============================================================================ autograd
# op -> its written float arguments (counts, labels and tasks are int64: they cannot require grad)
WRITTEN = {
    "prox_sgd_": ["params"], "taylor_importance_": ["importance"],
    "emcl_meta_step_": ["params", "importance", "meta_lrs"], "trajectory_shift_": ["phi", "thetas"],
    "mlp_prox_steps_": ["params"], "ring_insert_": ["data"], "reservoir_insert_": ["data"],
}
GRAD_CASES = [(op, name) for op, names in WRITTEN.items() for name in names]


def _requiring_grad(t, leaf):
    """``t``'s values as a leaf that requires grad, or as a non-leaf of a graph (t0 * 1)."""
    t0 = t.detach().clone().requires_grad_(True)
    return t0 if leaf else t0 * 1.0


def _with_grad(args, name, leaf, index=1):
    """args with ``args[name]`` (or its element ``index``) requiring grad; the label the error
    must name."""
    v = args[name]
    if isinstance(v, torch.Tensor):
        args[name] = _requiring_grad(v, leaf)
        return name
    v = list(v)
    v[index] = _requiring_grad(v[index], leaf)
    args[name] = v
    return rf"{name}\[{index}\]"


def test_the_issue_example():
    """``y = x * 1.; prox_sgd_([y], ...)`` used to give x.grad = 1 after y.sum().backward()
    (the true value is 1/(prox*h + 1) = 0.25): now the call raises and changes nothing."""
    for impl in (F, R):
        x = torch.ones(3, requires_grad=True)
        y = x * 1.0
        with pytest.raises(ValueError, match=r"params\[0\] requires grad: fastcl::prox_sgd_ writes it in place"):
            impl.prox_sgd_([y], [torch.ones(3)], [torch.zeros(3)], [torch.ones(3)], 0.5, 3.0)
        assert torch.equal(y, torch.ones(3)) and y._version == 0
        y.sum().backward()
        assert torch.equal(x.grad, torch.ones(3))  # y untouched: its true gradient


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("leaf", [True, False], ids=["leaf", "non-leaf"])
@pytest.mark.parametrize("op,name", GRAD_CASES)
def test_written_tensor_requiring_grad_is_refused(impl, op, name, leaf, device):
    names, args = valid(op, device=device)
    label = _with_grad(args, name, leaf)
    snap = snapshot(args)
    with pytest.raises(ValueError, match=rf"^{label} requires grad: fastcl::{op} writes it in place"):
        call(impl, op, names, args)
    assert_unchanged(snap, "a refused call")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("leaf", [True, False], ids=["leaf", "non-leaf"])
@pytest.mark.parametrize("op,name", GRAD_CASES)
def test_under_no_grad_the_update_proceeds(impl, op, name, leaf):
    """As torch's own in-place ops (an optimizer step on leaf parameters): the same result as on
    tensors that do not require grad, and the versions of the written tensors bumped."""
    names, args = valid(op)
    _, plain = valid(op)
    _with_grad(args, name, leaf)
    written = args[name] if isinstance(args[name], list) else [args[name]]
    versions = [t._version for t in written]
    with torch.no_grad():
        out = call(impl, op, names, args)
    want = call("reference", op, names, plain)
    for got, exp in zip(all_tensors(args), all_tensors(plain)):
        torch.testing.assert_close(got.detach(), exp, rtol=1e-12, atol=1e-12)
    if op == "reservoir_insert_":
        assert torch.equal(out, want)
    assert all(t._version > v for t, v in zip(written, versions))


def test_trajectory_shift_without_shift_reads_thetas_only():
    """shift=False does not write thetas: thetas that require grad are accepted (and untouched)."""
    for impl in ("fused", "reference", *(("torch.ops",) if HAVE_EXT else ())):
        names, args = valid("trajectory_shift_")
        args["shift"] = False
        args["thetas"] = [t.requires_grad_(True) for t in args["thetas"]]
        before = [t.detach().clone() for t in args["thetas"]]
        call(impl, "trajectory_shift_", names, args)
        assert all(torch.equal(t.detach(), b) for t, b in zip(args["thetas"], before))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,read", [("prox_sgd_", "grads"), ("ring_insert_", "x"), ("reservoir_insert_", "x"),
                                     ("mlp_prox_steps_", "x")])
def test_read_tensor_requiring_grad_is_accepted_and_stays_out_of_the_graph(impl, op, read):
    """Only values are read: the written tensors do not join the autograd graph (the reference
    used to make ``data`` of the memory ops a non-leaf of x's graph, unlike the fused op)."""
    names, args = valid(op)
    _, plain = valid(op)
    _with_grad(args, read, leaf=True)
    call(impl, op, names, args)
    call("reference", op, names, plain)
    for got, exp in zip(all_tensors(args), all_tensors(plain)):
        torch.testing.assert_close(got.detach(), exp, rtol=1e-12, atol=1e-12)
    written = args[WRITTEN[op][0]]
    assert not any(t.requires_grad for t in (written if isinstance(written, list) else [written]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["ring_insert_", "reservoir_insert_"])
def test_memory_ops_bump_the_versions_of_what_they_write(impl, op, device):
    """So autograd detects a tensor saved for backward that the op modified."""
    names, args = valid(op, device=device)
    written = {"ring_insert_": ["data", "counts"], "reservoir_insert_": ["data", "labels", "tasks"]}[op]
    before = {n: args[n]._version for n in names if isinstance(args[n], torch.Tensor)}
    call(impl, op, names, args)
    for n, v in before.items():
        assert (args[n]._version > v) == (n in written), (n, v, args[n]._version)


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_through_a_saved_tensor_updated_under_no_grad_raises(impl):
    x = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    names, args = valid("ring_insert_")
    args["data"] = data = x * 1.0  # a non-leaf, saved by the product below
    loss = (data * data).sum()
    with torch.no_grad():
        call(impl, "ring_insert_", names, args)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["ring_insert_", "reservoir_insert_"])
def test_memory_op_on_an_inference_tensor_outside_inference_mode_is_rejected(impl, op):
    names, args = valid(op)
    with torch.inference_mode():
        args["data"] = args["data"].clone()
    ts = all_tensors(args)
    before = [t.clone() for t in ts]
    with pytest.raises(ValueError, match=r"^data is an inference tensor"):
        call(impl, op, names, args)
    for t, b in zip(ts, before):
        assert_same(t, b, "a rejected call")


@needs_ext
def test_every_in_place_op_has_an_autograd_and_a_version_counter_kernel():
    """Any op whose schema writes an argument, now and as ops are added."""
    mutable = []
    for name in torch.ops.fastcl:
        packet = getattr(torch.ops.fastcl, name)
        schema = packet.default._schema
        if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            mutable.append(name)
            for key in ("Autograd", "ADInplaceOrView"):  # kernels of our own, not fallbacks
                assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcl::{name}", key), (name, key)
    assert set(mutable) == set(WRITTEN)


@needs_ext
def test_meta_tensors_are_refused_too():
    names, args = valid("prox_sgd_")
    args = {k: ([t.to("meta") for t in v] if isinstance(v, list) else v) for k, v in args.items()}
    args["params"][0].requires_grad_(True)
    with pytest.raises(ValueError, match=r"params\[0\] requires grad"):
        call("torch.ops", "prox_sgd_", names, args)


# ============================================================================ non-finite scalars
# op -> its float arguments without an upper bound (decay is bounded by 1: inf is "must be <= 1")
UNBOUNDED = {
    "prox_sgd_": ["lr", "prox"], "emcl_meta_step_": ["lam", "r", "alpha0", "eps"],
    "trajectory_shift_": ["meta_lr"], "mlp_prox_steps_": ["lr", "prox"],
}
INF_CASES = [(op, name, v) for op, ns in UNBOUNDED.items() for name in ns for v in (math.inf, 1e400)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,name,value", INF_CASES)
def test_infinite_scalar_is_rejected(impl, op, name, value, device):
    names, args = valid(op, device=device)
    args[name] = value
    snap = snapshot(args)
    with pytest.raises(ValueError, match=rf"^{name} must be finite, got inf$"):
        call(impl, op, names, args)
    assert_unchanged(snap, "a rejected call")


@pytest.mark.parametrize("op,name", [("taylor_importance_", "decay"), ("emcl_meta_step_", "decay")]
                         + [(op, n) for op, ns in UNBOUNDED.items() for n in ns])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_scalars_give_one_error_in_both_implementations(op, name, value):
    errors = []
    for impl in ("fused", "reference", *(("torch.ops",) if HAVE_EXT else ())):
        names, args = valid(op)
        args[name] = value
        with pytest.raises(ValueError) as info:
            call(impl, op, names, args)
        errors.append(str(info.value).splitlines()[0])
    assert len(set(errors)) == 1 and name in errors[0], errors


def test_prox_sgd_out_of_place_rejects_inf_too():
    _, args = valid("prox_sgd_")
    for impl in (F, R):
        with pytest.raises(ValueError, match=r"^lr must be finite"):
            impl.prox_sgd(args["params"], args["grads"], args["anchors"], args["importance"], math.inf, 0.5)


def test_largest_finite_scalars_are_accepted():
    names, args = valid("prox_sgd_")
    args["lr"] = args["prox"] = 1e300
    for impl in ("fused", "reference"):
        call(impl, "prox_sgd_", names, {k: ([t.clone() for t in v] if isinstance(v, list) else v)
                                        for k, v in args.items()})


# ============================================================================ memory aliasing
def _ring(buf_rows=16, device="cpu"):
    """ring_insert_ arguments whose data is rows [0, 12) of a larger buffer ``buf``."""
    names, args = valid("ring_insert_", device=device)
    buf = torch.randn(buf_rows, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    args["data"] = buf[:12]
    return names, args, buf


def _reservoir(buf_rows=8, device="cpu"):
    names, args = valid("reservoir_insert_", device=device)
    buf = torch.randn(buf_rows, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).to(device)
    args["data"] = buf[:4]
    return names, args, buf


def _set(**kw):
    """A mutation of (args, buf): ``args[k] = make(args, buf)`` for each ``k=make``, in order."""
    def mutate(a, buf):
        for k, make in kw.items():
            a[k] = make(a, buf)
    return mutate


def _ints(b, n):
    return torch.arange(n, device=b.device)


# (op, mutation of the valid call, error pattern): memory ops whose storage overlaps x, y or itself
OVERLAPS = {
    "ring_insert_-x rows of data": (
        "ring_insert_", _set(x=lambda a, b: a["data"][1:4]), r"data and x partially overlap in memory"),
    "ring_insert_-x is data": (
        "ring_insert_", _set(x=lambda a, b: a["data"], y=lambda a, b: _ints(b, 12) % 3),
        r"data and x are the same memory"),
    "ring_insert_-x straddles the end of data": (
        "ring_insert_", _set(x=lambda a, b: b.view(-1)[45:57].view(3, 4)), r"data and x partially overlap in memory"),
    "ring_insert_-x every 4th row of data": (
        "ring_insert_", _set(x=lambda a, b: a["data"][::4]), r"data and x are strided views of one storage"),
    "ring_insert_-y a view of counts": (
        "ring_insert_", _set(y=lambda a, b: a["counts"].view(-1)[3:6]), r"counts and y partially overlap in memory"),
    "ring_insert_-counts inside data": (  # int64 rows: counts can be a view of data
        "ring_insert_", _set(data=lambda a, b: _ints(b, 64).view(16, 4)[:12] % 2,
                             x=lambda a, b: a["data"].new_zeros(3, 4),
                             counts=lambda a, b: a["data"].view(-1)[40:46].view(2, 3)),
        r"data and counts partially overlap in memory"),
    "reservoir_insert_-x rows of data": (
        "reservoir_insert_", _set(x=lambda a, b: b[1:6]), r"data and x partially overlap in memory"),
    "reservoir_insert_-y a view of labels": (
        "reservoir_insert_", _set(labels=lambda a, b: _ints(b, 9)[0:4], y=lambda a, b: a["labels"].as_strided((5,), (1,), 2)),
        r"labels and y partially overlap in memory"),
    "reservoir_insert_-labels is tasks": (
        "reservoir_insert_", _set(tasks=lambda a, b: a["labels"]), r"labels and tasks are the same memory"),
}


def overlapping(case, device="cpu"):
    """(op, names, args, pattern) of an OVERLAPS case on ``device``."""
    op, mutate, pattern = OVERLAPS[case]
    names, args, buf = (_ring if op == "ring_insert_" else _reservoir)(device=device)
    mutate(args, buf)
    return op, names, args, pattern


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(OVERLAPS))
def test_memory_overlap_is_rejected(impl, case, device):
    """Before: no error, and the fused op and the reference gave different memories (one read x
    before any write, the other example by example). Now both refuse, naming both tensors."""
    op, names, args, pattern = overlapping(case, device)
    snap = snapshot(args)
    state = args["generator"].get_state() if "generator" in args else None
    with pytest.raises(ValueError, match=pattern):
        call(impl, op, names, args)
    assert_unchanged(snap, "a rejected call")
    if state is not None:
        assert torch.equal(args["generator"].get_state(), state), "a rejected call drew from the generator"


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_memory_overlap_gives_one_error_in_both_implementations(case):
    op, names, args, _ = overlapping(case)
    errors = []
    for impl in ("fused", "reference", *(("torch.ops",) if HAVE_EXT else ())):
        with pytest.raises(ValueError) as info:
            call(impl, op, names, args)
        errors.append(str(info.value).splitlines()[0])
    assert len(set(errors)) == 1, errors


@pytest.mark.parametrize("impl", IMPLS)
def test_ring_insert_of_a_disjoint_view_of_the_same_storage_is_accepted(impl):
    """x: rows of the buffer after data's rows (disjoint: accepted), equal to the reference
    on separate copies."""
    names, args, buf = _ring()
    args["x"] = buf[12:15]
    want = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    call("reference", "ring_insert_", names, want)
    x_before = args["x"].clone()
    call(impl, "ring_insert_", names, args)
    assert torch.equal(args["data"], want["data"]) and torch.equal(args["counts"], want["counts"])
    assert torch.equal(args["x"], x_before)


@pytest.mark.parametrize("impl", IMPLS)
def test_reservoir_insert_of_disjoint_views_of_the_same_storage_is_accepted(impl):
    """x rows after data in one buffer; labels, tasks and y disjoint slices of one int64 buffer."""
    names, args, buf = _reservoir(buf_rows=9)
    args["x"] = buf[4:9]
    ints = torch.arange(13)
    args["labels"], args["tasks"], args["y"] = ints[0:4], ints[4:8], ints[8:13]
    want = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    want["generator"] = torch.Generator().manual_seed(0)
    slots_want = call("reference", "reservoir_insert_", names, want)
    slots = call(impl, "reservoir_insert_", names, args)
    assert torch.equal(slots, slots_want)
    for n in ("data", "labels", "tasks"):
        assert torch.equal(args[n], want[n]), n
    assert torch.equal(ints[8:13], torch.arange(8, 13))


@pytest.mark.parametrize("impl", IMPLS)
def test_strided_storage_sharing_no_memory_is_accepted(impl):
    """Strided (non-dense) labels or counts that share no memory with anything: accepted (the
    fused ops used to refuse them, "labels and tasks share memory", comparing strided views of
    different storages as if they might overlap), equal to the reference."""
    names, args = valid("reservoir_insert_")
    args["labels"] = torch.zeros(8, dtype=torch.int64)[::2]
    want = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    want["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(call(impl, "reservoir_insert_", names, args), call("reference", "reservoir_insert_", names, want))
    assert torch.equal(args["labels"], want["labels"]) and torch.equal(args["data"], want["data"])

    names, args = valid("ring_insert_")
    args["counts"] = torch.tensor([[0, 9, 1, 9, 3], [2, 9, 0, 9, 1]])[:, ::2]
    want = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    call(impl, "ring_insert_", names, args)
    call("reference", "ring_insert_", names, want)
    assert torch.equal(args["counts"], want["counts"]) and torch.equal(args["data"], want["data"])


@pytest.mark.parametrize("impl", IMPLS)
def test_ring_insert_of_an_interleaved_disjoint_strided_view_is_refused(impl):
    """Rows interleaved with data's rows in one buffer cannot be proven disjoint cheaply: refused,
    as the list ops refuse written strided views whose byte ranges intersect."""
    names, args = valid("ring_insert_")
    buf = torch.randn(24, 4, dtype=torch.float64)
    args["data"], args["x"] = buf[0::2], buf[1:7:2]
    snap = snapshot(args)
    with pytest.raises(ValueError, match=r"data and x are strided views of one storage"):
        call(impl, "ring_insert_", names, args)
    assert_unchanged(snap, "a rejected call")


@needs_ext
def test_compiled_calls_keep_the_autograd_contract():
    """torch.compile traces through the same Autograd kernel: a written tensor that requires grad
    is refused at trace time; under torch.no_grad() the compiled step updates it and bumps its
    version."""
    torch._dynamo.reset()

    def step(params, grads):
        F.prox_sgd_(params, grads, None, None, 0.1, 0.0)
        return params[0] * 2

    g = [torch.randn(3)]
    p = [torch.randn(3, requires_grad=True)]
    before = p[0].detach().clone()
    with pytest.raises(Exception, match=r"params\[0\] requires grad"):
        torch.compile(step, backend="aot_eager", fullgraph=True)(p, g)
    assert torch.equal(p[0].detach(), before)
    with torch.no_grad():
        version = p[0]._version
        torch.compile(step, backend="aot_eager", fullgraph=True)(p, g)
        torch.testing.assert_close(p[0], before - 0.1 * g[0])
        assert p[0]._version > version
