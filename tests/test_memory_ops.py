"""The fused episodic-memory ops against their references (fastcl/ops/reference.py).

ring_insert_ is deterministic: the fused op must leave data and counts bit-identical to the
reference. ring_sample and reservoir_insert_ draw uniforms: given identically seeded generators
they must return the same indices, write the same rows and leave the generators in the same
state. Bad input must raise the reference's exception type, name the argument, and change no
tensor (and draw nothing).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st
from torch.library import opcheck

import fastcl.ops as F
from fastcl.ops import reference as R

pytestmark = pytest.mark.skipif(F.backend() == "reference", reason="the extension fastcl._C did not load")

ops = torch.ops.fastcl if F.backend() != "reference" else None

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8]
FEATS = [(), (3,), (2, 3)]


def rand(shape, dtype, gen):
    """Random values of any dtype of DTYPES (all finite, so torch.equal compares them bitwise)."""
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.randn(shape, generator=gen).to(dtype)


def storage(shape, dtype, gen, strided: bool):
    """A tensor of `shape`; strided: a non-contiguous view (every other row of a taller tensor)."""
    if not strided:
        return rand(shape, dtype, gen)
    big = rand((shape[0] * 2,) + tuple(shape[1:]), dtype, gen)
    return big[::2]


def same_state(g1: torch.Generator, g2: torch.Generator) -> bool:
    return torch.equal(g1.get_state(), g2.get_state())


# ---------------------------------------------------------------------------- ring_insert_
@st.composite
def ring_cases(draw):
    num_tasks = draw(st.integers(1, 3))
    num_classes = draw(st.integers(1, 4))
    m = draw(st.integers(1, 4))
    feat = draw(st.sampled_from(FEATS))
    dtype = draw(st.sampled_from(DTYPES))
    # batches from empty to several times a ring, sometimes all of one class (more than m)
    b = draw(st.integers(0, 3 * m + 2))
    one_class = draw(st.booleans())
    c0 = draw(st.integers(0, num_classes - 1))
    labels = [c0] * b if one_class else draw(st.lists(st.integers(0, num_classes - 1), min_size=b, max_size=b))
    counts = draw(st.lists(st.integers(0, 3 * m), min_size=num_tasks * num_classes,
                           max_size=num_tasks * num_classes))
    task = draw(st.integers(0, num_tasks - 1))
    return dict(num_tasks=num_tasks, num_classes=num_classes, m=m, feat=feat, dtype=dtype,
                labels=labels, counts=counts, task=task, seed=draw(st.integers(0, 2**31 - 1)),
                strided_data=draw(st.booleans()), strided_x=draw(st.booleans()))


def make_ring(case):
    g = torch.Generator().manual_seed(case["seed"])
    rows = case["num_tasks"] * case["num_classes"] * case["m"]
    data = storage((rows,) + case["feat"], case["dtype"], g, case["strided_data"])
    counts = torch.tensor(case["counts"], dtype=torch.int64).view(case["num_tasks"], case["num_classes"])
    b = len(case["labels"])
    x = storage((b,) + case["feat"], case["dtype"], g, case["strided_x"])
    y = torch.tensor(case["labels"], dtype=torch.int64)
    return data, counts, x, y


@given(ring_cases())
def test_ring_insert_equals_reference(case):
    data, counts, x, y = make_ring(case)
    d_ref, c_ref = data.clone(), counts.clone()
    x_before = x.clone()
    ops.ring_insert_(data, counts, x, y, case["task"])
    R.ring_insert_(d_ref, c_ref, x, y, case["task"])
    assert torch.equal(counts, c_ref)
    assert torch.equal(data, d_ref)
    assert torch.equal(x, x_before)  # the batch is read only


def test_ring_insert_large_rows_parallel_copy():
    # 12 rows of 64 KiB: the copy is split across threads (> 1 MiB), with 3 rows of class 1
    # overwritten within the batch (m = 4, 7 examples of class 1).
    g = torch.Generator().manual_seed(1)
    data = torch.randn(2 * 3 * 4, 16384, generator=g)
    counts = torch.randint(0, 6, (2, 3), generator=g)
    x = torch.randn(12, 16384, generator=g)
    y = torch.tensor([1, 0, 1, 1, 2, 1, 1, 0, 1, 1, 2, 0])
    d_ref, c_ref = data.clone(), counts.clone()
    ops.ring_insert_(data, counts, x, y, 1)
    R.ring_insert_(d_ref, c_ref, x, y, 1)
    assert torch.equal(counts, c_ref) and torch.equal(data, d_ref)


def test_ring_insert_batch_that_is_a_view_of_data_is_rejected():
    # x aliases rows of data: the fused op (x read before any write) and the reference (example
    # by example) would store different rows, so both refuse it (more in test_op_contracts.py)
    g = torch.Generator().manual_seed(2)
    data = torch.randn(1 * 2 * 3, 4, generator=g)
    counts = torch.tensor([[1, 2]])
    y = torch.tensor([0, 0, 1, 0])
    before = data.clone(), counts.clone()
    for fn in (ops.ring_insert_, R.ring_insert_):
        with pytest.raises(ValueError, match="data and x partially overlap in memory"):
            fn(data, counts, data[1:5], y, 0)
        assert torch.equal(data, before[0]) and torch.equal(counts, before[1])


# ---------------------------------------------------------------------------- ring_sample
@st.composite
def sample_cases(draw):
    num_tasks = draw(st.integers(1, 4))
    num_classes = draw(st.integers(1, 4))
    m = draw(st.integers(1, 5))
    counts = draw(st.lists(st.sampled_from([0, 0, 1, m - 1, m, m + 1, 3 * m]),
                           min_size=num_tasks * num_classes, max_size=num_tasks * num_classes))
    tasks = draw(st.lists(st.integers(0, num_tasks - 1), max_size=6))  # duplicates allowed
    n = draw(st.integers(0, 30))
    return dict(num_tasks=num_tasks, num_classes=num_classes, m=m, counts=counts, tasks=tasks, n=n,
                seed=draw(st.integers(0, 2**31 - 1)))


@given(sample_cases())
def test_ring_sample_equals_reference(case):
    counts = torch.tensor(case["counts"], dtype=torch.int64).view(case["num_tasks"], case["num_classes"])
    m, tasks, n = case["m"], case["tasks"], case["n"]
    g1 = torch.Generator().manual_seed(case["seed"])
    g2 = torch.Generator().manual_seed(case["seed"])
    filled = counts.clamp(max=m)[sorted(set(tasks))].sum() if tasks else 0
    if filled == 0:
        with pytest.raises(ValueError, match="tasks"):
            ops.ring_sample(counts, m, tasks, n, g1)
        with pytest.raises(ValueError, match="tasks"):
            R.ring_sample(counts, m, tasks, n, g2)
        assert same_state(g1, g2) and same_state(g1, torch.Generator().manual_seed(case["seed"]))
        return
    got = ops.ring_sample(counts, m, tasks, n, g1)
    want = R.ring_sample(counts, m, tasks, n, g2)
    assert got.dtype == torch.int64 and got.shape == (n,)
    assert torch.equal(got, want)
    assert same_state(g1, g2)
    # every draw is a filled slot of a requested task
    ring = got // m
    assert all(int(t) in tasks for t in ring // case["num_classes"])
    assert bool(((got % m) < counts.flatten()[ring].clamp(max=m)).all())


@given(sample_cases())
def test_ring_sample_default_generator_equals_reference(case):
    counts = torch.tensor(case["counts"], dtype=torch.int64).view(case["num_tasks"], case["num_classes"])
    counts[case["num_tasks"] - 1, 0] += 1  # the last task holds an example
    tasks = case["tasks"] + [case["num_tasks"] - 1]
    torch.manual_seed(case["seed"])
    got = ops.ring_sample(counts, case["m"], tasks, case["n"])
    after_fused = torch.rand(3)
    torch.manual_seed(case["seed"])
    want = R.ring_sample(counts, case["m"], tasks, case["n"])
    after_ref = torch.rand(3)
    assert torch.equal(got, want) and torch.equal(after_fused, after_ref)


# ---------------------------------------------------------------------------- reservoir_insert_
@st.composite
def reservoir_cases(draw):
    cap = draw(st.integers(1, 6))
    b = draw(st.integers(0, 12))
    return dict(cap=cap, b=b, n_seen=draw(st.sampled_from([0, 1, cap - 1, cap, cap + 3, 50, 10**6])),
                feat=draw(st.sampled_from(FEATS)), dtype=draw(st.sampled_from(DTYPES)),
                task=draw(st.integers(0, 3)), seed=draw(st.integers(0, 2**31 - 1)),
                strided_data=draw(st.booleans()), strided_x=draw(st.booleans()))


def make_reservoir(case):
    g = torch.Generator().manual_seed(case["seed"])
    cap, b = case["cap"], case["b"]
    data = storage((cap,) + case["feat"], case["dtype"], g, case["strided_data"])
    labels = torch.randint(0, 10, (cap,), generator=g)
    tasks = torch.randint(0, 4, (cap,), generator=g)
    x = storage((b,) + case["feat"], case["dtype"], g, case["strided_x"])
    y = torch.randint(0, 10, (b,), generator=g)
    return data, labels, tasks, x, y


@given(reservoir_cases())
def test_reservoir_insert_equals_reference(case):
    data, labels, tasks, x, y = make_reservoir(case)
    ref = [t.clone() for t in (data, labels, tasks)]
    g1 = torch.Generator().manual_seed(case["seed"])
    g2 = torch.Generator().manual_seed(case["seed"])
    got = ops.reservoir_insert_(data, labels, tasks, x, y, case["task"], case["n_seen"], g1)
    want = R.reservoir_insert_(*ref, x, y, case["task"], case["n_seen"], g2)
    assert got.dtype == torch.int64 and got.shape == (case["b"],)
    assert torch.equal(got, want)
    assert torch.equal(data, ref[0]) and torch.equal(labels, ref[1]) and torch.equal(tasks, ref[2])
    assert same_state(g1, g2)


def test_reservoir_insert_large_rows_parallel_copy_with_collisions():
    # 64 rows of 64 KiB into 40 slots past capacity: many are kept (> 1 MiB: parallel copy),
    # several draw the same slot (the later must win).
    g = torch.Generator().manual_seed(3)
    data = torch.randn(40, 16384, generator=g)
    labels, tasks = torch.zeros(40, dtype=torch.int64), torch.zeros(40, dtype=torch.int64)
    x = torch.randn(64, 16384, generator=g)
    y = torch.arange(64)
    ref = [t.clone() for t in (data, labels, tasks)]
    got = ops.reservoir_insert_(data, labels, tasks, x, y, 2, 40, torch.Generator().manual_seed(4))
    want = R.reservoir_insert_(*ref, x, y, 2, 40, torch.Generator().manual_seed(4))
    kept = want[want >= 0]
    assert kept.numel() * 16384 * 4 > 2**20 and kept.unique().numel() < kept.numel()  # the case is what it says
    assert torch.equal(got, want)
    assert torch.equal(data, ref[0]) and torch.equal(labels, ref[1]) and torch.equal(tasks, ref[2])


# ---------------------------------------------------------------------------- opcheck
# opcheck's AOT-dispatch checks trace the op; torch 2.11's fx cannot trace a torch.Generator
# argument ("NotImplementedError: argument of type: <class 'torch._C.Generator'>"), torch 2.13's
# can. With an explicit generator those two checks run from 2.13 on; the schema, autograd and
# fake-tensor checks run everywhere, and the AOT checks run on every version with the global RNG.
NO_AOT = ("test_schema", "test_autograd_registration", "test_faketensor")
GENERATOR_CHECKS = NO_AOT + (("test_aot_dispatch_dynamic",) if torch.__version__ >= (2, 13) else ())


def _ring_args(requires_grad=False):
    g = torch.Generator().manual_seed(5)
    data = torch.randn(2 * 3 * 2, 4, generator=g)
    counts = torch.randint(0, 4, (2, 3), generator=g)
    x = torch.randn(5, 4, generator=g).requires_grad_(requires_grad)
    y = torch.tensor([0, 1, 1, 2, 1])
    return data, counts, x, y


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_ring_insert(requires_grad):
    # requires_grad=True runs the autograd-registration check: the op is not differentiable
    # (it stores a copy) and returns nothing, so it must not produce outputs requiring grad.
    data, counts, x, y = _ring_args(requires_grad)
    opcheck(ops.ring_insert_.default, (data, counts, x, y, 1))


def test_opcheck_ring_sample():
    _, counts, _, _ = _ring_args()
    # Global RNG: every check, including eager vs AOT-traced outputs (the harness reseeds the
    # global generator before each run).
    opcheck(ops.ring_sample.default, (counts, 2, [0, 1], 7))
    # An explicit generator: the AOT check compares two runs of the op that share the generator
    # object, which the harness cannot reseed (each run advances it), so the outputs differ by
    # design. That check is left out here and run below on a draw the generator cannot change.
    opcheck(ops.ring_sample.default, (counts, 2, [0, 1], 7), {"generator": torch.Generator().manual_seed(0)},
            test_utils=NO_AOT)
    single = torch.zeros(2, 3, dtype=torch.int64)
    single[1, 2] = 1  # one filled slot: every draw is that slot
    opcheck(ops.ring_sample.default, (single, 2, [1], 5), {"generator": torch.Generator().manual_seed(0)},
            test_utils=GENERATOR_CHECKS)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_reservoir_insert(requires_grad):
    g = torch.Generator().manual_seed(6)
    data = torch.randn(6, 4, generator=g)
    labels, tasks = torch.zeros(6, dtype=torch.int64), torch.zeros(6, dtype=torch.int64)
    _, _, x, y = _ring_args(requires_grad)
    # past capacity (random slots): every check but the AOT comparison (see test_opcheck_ring_sample)
    opcheck(ops.reservoir_insert_.default, (data, labels, tasks, x, y, 0, 4), {"generator": torch.Generator().manual_seed(0)},
            test_utils=NO_AOT)
    opcheck(ops.reservoir_insert_.default, (data, labels, tasks, x, y, 0, 4))
    # within capacity the slots do not depend on the draws: the full check with a generator
    opcheck(ops.reservoir_insert_.default, (data, labels, tasks, x, y, 0, 1), {"generator": torch.Generator().manual_seed(0)},
            test_utils=GENERATOR_CHECKS)


# ---------------------------------------------------------------------------- bad input
def _ring_ok():
    g = torch.Generator().manual_seed(7)
    return dict(data=torch.randn(2 * 3 * 2, 4, generator=g), counts=torch.randint(0, 3, (2, 3), generator=g),
                x=torch.randn(3, 4, generator=g), y=torch.tensor([0, 2, 2]), task=1)


RING_BAD = {
    "counts int32": (lambda a: a.update(counts=a["counts"].int()), TypeError, "counts"),
    "counts 1-d": (lambda a: a.update(counts=a["counts"].flatten()), TypeError, "counts"),
    "counts negative": (lambda a: a["counts"].__setitem__((0, 1), -1), ValueError, "counts"),
    "data rows": (lambda a: a.update(data=a["data"][:-1]), ValueError, "data"),
    "data no rows": (lambda a: a.update(data=a["data"][:0]), ValueError, "data"),
    "x feat": (lambda a: a.update(x=a["x"][:, :3]), ValueError, "x"),
    "x scalar": (lambda a: a.update(x=a["x"][0, 0]), ValueError, "x"),
    "x dtype": (lambda a: a.update(x=a["x"].double()), TypeError, "x"),
    "y dtype": (lambda a: a.update(y=a["y"].int()), ValueError, "y"),
    "y length": (lambda a: a.update(y=a["y"][:2]), ValueError, "y"),
    "y 2-d": (lambda a: a.update(y=a["y"][:, None]), ValueError, "y"),
    "label high": (lambda a: a["y"].__setitem__(1, 3), ValueError, "y"),
    "label negative": (lambda a: a["y"].__setitem__(2, -1), ValueError, "y"),
    "task high": (lambda a: a.update(task=2), ValueError, "task"),
    "task negative": (lambda a: a.update(task=-1), ValueError, "task"),
}


@pytest.mark.parametrize("name", sorted(RING_BAD))
def test_ring_insert_bad_input(name):
    fix, exc, word = RING_BAD[name]
    for fn in (ops.ring_insert_, R.ring_insert_):
        a = _ring_ok()
        fix(a)
        before = {k: v.clone() for k, v in a.items() if isinstance(v, torch.Tensor)}
        with pytest.raises(exc, match=word):
            fn(a["data"], a["counts"], a["x"], a["y"], a["task"])
        for k, v in before.items():
            assert torch.equal(a[k], v), f"{fn} changed {k} on a rejected call"


def test_ring_insert_rejects_expanded_storage():
    a = _ring_ok()
    data = torch.zeros(1, 4).expand(12, 4)
    with pytest.raises(ValueError, match="data"):
        ops.ring_insert_(data, a["counts"], a["x"], a["y"], 1)
    counts = torch.zeros(1, 3, dtype=torch.int64).expand(2, 3)
    with pytest.raises(ValueError, match="counts"):
        ops.ring_insert_(a["data"], counts, a["x"], a["y"], 1)
    assert torch.equal(data, torch.zeros(12, 4)) and torch.equal(counts, torch.zeros(2, 3, dtype=torch.int64))


SAMPLE_BAD = {
    "counts dtype": (lambda a: a.update(counts=a["counts"].int()), TypeError, "counts"),
    "counts negative": (lambda a: a["counts"].__setitem__((1, 0), -2), ValueError, "counts"),
    "m zero": (lambda a: a.update(m=0), ValueError, "m"),
    "n negative": (lambda a: a.update(n=-1), ValueError, "n"),
    "task id high": (lambda a: a.update(tasks=[0, 2]), ValueError, "tasks"),
    "task id negative": (lambda a: a.update(tasks=[-1]), ValueError, "tasks"),
    "empty selection": (lambda a: a.update(tasks=[]), ValueError, "tasks"),
    "selection holds nothing": (lambda a: a["counts"][0].zero_(), ValueError, "tasks"),
}


@pytest.mark.parametrize("name", sorted(SAMPLE_BAD))
def test_ring_sample_bad_input(name):
    fix, exc, word = SAMPLE_BAD[name]
    for fn in (ops.ring_sample, R.ring_sample):
        a = dict(counts=torch.tensor([[2, 0, 1], [3, 3, 0]]), m=2, tasks=[0], n=4)
        fix(a)
        g = torch.Generator().manual_seed(8)
        state = g.get_state()
        counts = a["counts"].clone()
        with pytest.raises(exc, match=word):
            fn(a["counts"], a["m"], a["tasks"], a["n"], g)
        assert torch.equal(g.get_state(), state), "a rejected call drew from the generator"
        assert torch.equal(a["counts"], counts)


def _reservoir_ok():
    g = torch.Generator().manual_seed(9)
    return dict(data=torch.randn(4, 3, generator=g), labels=torch.zeros(4, dtype=torch.int64),
                tasks=torch.zeros(4, dtype=torch.int64), x=torch.randn(5, 3, generator=g),
                y=torch.arange(5), task=1, n_seen=2)


RESERVOIR_BAD = {
    "no rows": (lambda a: a.update(data=a["data"][:0]), ValueError, "data"),
    "labels length": (lambda a: a.update(labels=a["labels"][:3]), ValueError, "labels"),
    "labels dtype": (lambda a: a.update(labels=a["labels"].int()), ValueError, "labels"),
    "tasks length": (lambda a: a.update(tasks=a["tasks"][:3]), ValueError, "tasks"),
    "tasks dtype": (lambda a: a.update(tasks=a["tasks"].float()), ValueError, "tasks"),
    "x feat": (lambda a: a.update(x=a["x"][:, :2]), ValueError, "x"),
    "x dtype": (lambda a: a.update(x=a["x"].half()), TypeError, "x"),
    "y dtype": (lambda a: a.update(y=a["y"].int()), ValueError, "y"),
    "y length": (lambda a: a.update(y=a["y"][:4]), ValueError, "y"),
    "n_seen negative": (lambda a: a.update(n_seen=-1), ValueError, "n_seen"),
    "task negative": (lambda a: a.update(task=-1), ValueError, "task"),
}


@pytest.mark.parametrize("name", sorted(RESERVOIR_BAD))
def test_reservoir_insert_bad_input(name):
    fix, exc, word = RESERVOIR_BAD[name]
    for fn in (ops.reservoir_insert_, R.reservoir_insert_):
        a = _reservoir_ok()
        fix(a)
        before = {k: v.clone() for k, v in a.items() if isinstance(v, torch.Tensor)}
        g = torch.Generator().manual_seed(10)
        state = g.get_state()
        with pytest.raises(exc, match=word):
            fn(a["data"], a["labels"], a["tasks"], a["x"], a["y"], a["task"], a["n_seen"], g)
        assert torch.equal(g.get_state(), state), "a rejected call drew from the generator"
        for k, v in before.items():
            assert torch.equal(a[k], v), f"{fn} changed {k} on a rejected call"


def test_reservoir_insert_rejects_shared_labels_and_tasks():
    a = _reservoir_ok()
    before = a["data"].clone()
    for fn in (ops.reservoir_insert_, R.reservoir_insert_):
        with pytest.raises(ValueError, match="labels and tasks are the same memory"):
            fn(a["data"], a["labels"], a["labels"], a["x"], a["y"], 1, 0)
        assert torch.equal(a["data"], before) and not a["labels"].any()


# ---------------------------------------------------------------------------- ring_sample_rows
@given(sample_cases(), st.sampled_from(DTYPES), st.sampled_from(FEATS), st.booleans())
def test_ring_sample_rows_equals_reference(case, dtype, feat, strided):
    counts = torch.tensor(case["counts"], dtype=torch.int64).view(case["num_tasks"], case["num_classes"])
    m, tasks, n = case["m"], case["tasks"], case["n"]
    rows = case["num_tasks"] * case["num_classes"] * m
    data = storage((rows,) + feat, dtype, torch.Generator().manual_seed(case["seed"]), strided)
    before = data.clone()
    g1 = torch.Generator().manual_seed(case["seed"])
    g2 = torch.Generator().manual_seed(case["seed"])
    filled = counts.clamp(max=m)[sorted(set(tasks))].sum() if tasks else 0
    if filled == 0:
        for fn, g in ((ops.ring_sample_rows, g1), (R.ring_sample_rows, g2)):
            with pytest.raises(ValueError, match="tasks"):
                fn(data, counts, tasks, n, g)
        assert same_state(g1, g2)
        return
    got = ops.ring_sample_rows(data, counts, tasks, n, g1)
    want = R.ring_sample_rows(data, counts, tasks, n, g2)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert same_state(g1, g2)
    # the same draws as ring_sample, and the gathered rows are copies of them
    assert torch.equal(got[3], R.ring_sample(counts, m, tasks, n, torch.Generator().manual_seed(case["seed"])))
    assert torch.equal(data, before)
    if n:
        assert got[0].data_ptr() != data.data_ptr()


def test_opcheck_ring_sample_rows():
    data, counts, _, _ = _ring_args()
    opcheck(ops.ring_sample_rows.default, (data, counts, [0, 1], 7))
    opcheck(ops.ring_sample_rows.default, (data, counts, [0, 1], 7), {"generator": torch.Generator().manual_seed(0)},
            test_utils=NO_AOT)


@pytest.mark.parametrize("bad, exc, word", [
    (dict(data=torch.zeros(11, 4)), ValueError, "data"),
    (dict(counts=torch.zeros(2, 3, dtype=torch.int32)), TypeError, "counts"),
    (dict(tasks=[2]), ValueError, "tasks"),
    (dict(n=-1), ValueError, "n"),
])
def test_ring_sample_rows_bad_input(bad, exc, word):
    for fn in (ops.ring_sample_rows, R.ring_sample_rows):
        a = dict(data=torch.zeros(12, 4), counts=torch.ones(2, 3, dtype=torch.int64), tasks=[0], n=3)
        a.update(bad)
        g = torch.Generator().manual_seed(1)
        state = g.get_state()
        with pytest.raises(exc, match=word):
            fn(a["data"], a["counts"], a["tasks"], a["n"], g)
        assert torch.equal(g.get_state(), state)
