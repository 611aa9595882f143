"""Invariants of the episodic memories (fastcl.memory): FIFO order, capacity, sampling from
filled slots of the requested tasks, uniformity, reservoir inclusion probability, bad input,
and exact resume from state_dict.

Examples carry their id as their value (every feature of example k equals k), so a row of the
storage says which example it holds.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, strategies as st

from fastcl.memory import ReservoirBuffer, RingBuffer


def chi2_critical(df: int, p: float = 1e-3) -> float:
    """Upper p-quantile of chi-square(df): scipy when installed, else Wilson-Hilferty."""
    try:
        from scipy.stats import chi2

        return float(chi2.ppf(1 - p, df))
    except ImportError:
        z = {1e-3: 3.090232306167813}[p]  # standard normal quantile
        return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_stat(observed: torch.Tensor, expected: float) -> float:
    return float(((observed.double() - expected) ** 2 / expected).sum())


def examples(ids, shape=(3,), dtype=torch.float64):
    """Examples whose every feature is their id."""
    ids = torch.as_tensor(ids, dtype=torch.float64)
    return ids.reshape(-1, *([1] * len(shape))).expand(-1, *shape).to(dtype).contiguous()


# ============================================================================ RingBuffer
@st.composite
def ring_streams(draw):
    num_tasks = draw(st.integers(1, 3))
    num_classes = draw(st.integers(1, 4))
    m = draw(st.integers(1, 4))
    batches = draw(st.lists(
        st.tuples(st.integers(0, num_tasks - 1),
                  st.lists(st.integers(0, num_classes - 1), max_size=2 * m + 2)),
        max_size=8))
    return num_tasks, num_classes, m, batches


@given(ring_streams())
def test_ring_fifo_per_class_and_capacity(stream):
    num_tasks, num_classes, m, batches = stream
    buf = RingBuffer(num_tasks, num_classes, m, (3,), dtype=torch.float64)
    model = {}  # (task, class) -> ids in insertion order
    next_id = 1  # 0 marks a slot never written
    for task, labels in batches:
        ids = list(range(next_id, next_id + len(labels)))
        next_id += len(labels)
        buf.add(examples(ids), torch.tensor(labels, dtype=torch.int64), task)
        for i, c in zip(ids, labels):
            model.setdefault((task, c), []).append(i)
    for t in range(num_tasks):
        for c in range(num_classes):
            seen = model.get((t, c), [])
            rows = buf.data[(t * num_classes + c) * m:(t * num_classes + c + 1) * m, 0]
            want = torch.zeros(m, dtype=torch.float64)
            for k, i in enumerate(seen):  # one by one: example k of the ring goes to slot k % m
                want[k % m] = i
            assert torch.equal(rows, want), f"ring ({t}, {c}): {rows.tolist()} != {want.tolist()}"
            assert int(buf.counts[t, c]) == len(seen)
            # the kept examples are the last min(n, m) of the class, oldest overwritten first
            kept = sorted(int(v) for v in rows if v > 0)
            assert kept == sorted(seen[-m:]) if seen else kept == []
    assert len(buf) == sum(min(len(v), m) for v in model.values()) <= buf.capacity
    assert buf.inserted == tuple(sum(len(l) for tt, l in batches if tt == t) for t in range(num_tasks))
    assert buf.data.shape == (num_tasks * num_classes * m, 3)


@given(ring_streams(), st.data())
def test_ring_samples_filled_slots_of_requested_tasks(stream, data):
    num_tasks, num_classes, m, batches = stream
    buf = RingBuffer(num_tasks, num_classes, m, (2,), dtype=torch.float64)
    owner = {}  # id -> (task, label)
    next_id = 1
    for task, labels in batches:
        ids = list(range(next_id, next_id + len(labels)))
        next_id += len(labels)
        buf.add(examples(ids, (2,)), torch.tensor(labels, dtype=torch.int64), task)
        owner.update({i: (task, c) for i, c in zip(ids, labels)})
    tasks = data.draw(st.one_of(st.none(), st.lists(st.integers(0, num_tasks - 1), max_size=3)))
    sel = buf.tasks_with_data() if tasks is None else sorted(set(tasks))
    if not any(buf.inserted[t] for t in sel):
        with pytest.raises(ValueError, match="cannot sample"):
            buf.sample(5, tasks)
        return
    n = data.draw(st.integers(0, 40))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x, y, t = buf.sample(n, tasks, generator=g)
    assert x.shape == (n, 2) and y.shape == (n,) and t.shape == (n,)
    assert y.dtype == torch.int64 and t.dtype == torch.int64
    for k in range(n):
        i = int(x[k, 0])
        assert i in owner, "sampled an empty slot"
        assert owner[i] == (int(t[k]), int(y[k])), "label / task id do not match the example"
        assert int(t[k]) in sel


def test_ring_sampling_is_uniform_over_filled_slots():
    # rings filled unevenly (some partial, some full, one task left out): every filled slot of
    # the selection has probability 1/N per draw; chi-square goodness of fit at p = 1e-3
    torch.manual_seed(0)
    buf = RingBuffer(3, 4, 5, (1,), dtype=torch.float64)
    for task, sizes in ((0, [5, 2, 0, 9]), (1, [1, 0, 3, 5]), (2, [4, 4, 4, 4])):
        y = torch.cat([torch.full((s,), c, dtype=torch.int64) for c, s in enumerate(sizes)])
        buf.add(examples(torch.arange(1, len(y) + 1) + 100 * task, (1,)), y, task)
    idx = buf.sample_indices(40000, tasks=[0, 1], generator=torch.Generator().manual_seed(1))
    hist = torch.bincount(idx, minlength=buf.capacity)
    filled = torch.zeros(buf.capacity, dtype=torch.bool)
    for t in (0, 1):
        for c in range(4):
            r = (t * 4 + c) * 5
            filled[r:r + min(int(buf.counts[t, c]), 5)] = True
    assert int(hist[~filled].sum()) == 0, "drew an empty slot or a slot of another task"
    observed = hist[filled]
    n_filled = observed.numel()
    assert n_filled == (5 + 2 + 0 + 5) + (1 + 0 + 3 + 5)
    assert chi2_stat(observed, 40000 / n_filled) < chi2_critical(n_filled - 1)


def test_ring_sample_task_selection_forms():
    buf = RingBuffer(4, 2, 2, (1,))
    for t in range(3):
        buf.add(torch.full((3, 1), float(t)), torch.tensor([0, 1, 1]), t)
    g = torch.Generator().manual_seed(0)
    _, _, t = buf.sample(200, tasks=range(2), generator=g)  # "all previous tasks" of task 2
    assert set(t.tolist()) == {0, 1}
    _, _, t = buf.sample(200, generator=g)  # None: every task with data
    assert set(t.tolist()) == {0, 1, 2}
    _, _, t = buf.sample(50, tasks=(2, 2), generator=g)
    assert set(t.tolist()) == {2}
    x, y, t = buf.sample(0, generator=g)
    assert x.shape == (0, 1) and y.shape == (0,) and t.shape == (0,)


def test_ring_empty_selection_is_rejected_from_host_counters():
    # the counts tensor is replaced by a meta tensor (no values): if the empty-selection check
    # read it (a device sync on a GPU), this would fail with a RuntimeError, not the ValueError
    buf = RingBuffer(3, 2, 2, (4,))
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)
    buf.add(torch.randn(2, 4), torch.tensor([0, 1]), 1)
    buf.counts = torch.empty(3, 2, dtype=torch.int64, device="meta")
    for tasks in ([0], [0, 2], range(0), []):
        with pytest.raises(ValueError, match="tasks"):
            buf.sample(4, tasks=tasks)


def test_ring_add_detaches_and_stores_uint8():
    buf = RingBuffer(1, 2, 3, (2, 2), dtype=torch.uint8)
    x = torch.randint(0, 256, (4, 2, 2), dtype=torch.uint8)
    buf.add(x, torch.tensor([1, 1, 0, 1]), 0)
    assert torch.equal(buf.data[3:6], x[[0, 1, 3]]) and torch.equal(buf.data[0], x[2])
    fbuf = RingBuffer(1, 2, 3, (2,))
    xg = torch.randn(2, 2, requires_grad=True)
    fbuf.add(xg, torch.tensor([0, 1]), 0)
    assert not fbuf.data.requires_grad and fbuf.data.grad_fn is None
    assert torch.equal(fbuf.data[[0, 3]], xg.detach())


RING_CTOR_BAD = [
    (dict(num_tasks=0), ValueError, "num_tasks"),
    (dict(num_classes=0), ValueError, "num_classes"),
    (dict(per_class=0), ValueError, "per_class"),
    (dict(per_class=2.5), TypeError, "per_class"),
    (dict(per_class=True), TypeError, "per_class"),
    (dict(example_shape=(3, -1)), ValueError, "example_shape"),
    (dict(example_shape="3"), TypeError, "example_shape"),
    (dict(dtype="float32"), TypeError, "dtype"),
]


@pytest.mark.parametrize("kwargs,exc,word", RING_CTOR_BAD)
def test_ring_constructor_bad_input(kwargs, exc, word):
    args = dict(num_tasks=2, num_classes=3, per_class=2, example_shape=(4,))
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        RingBuffer(**args)


RING_ADD_BAD = {
    "x shape": (lambda a: a.update(x=torch.randn(3, 5)), ValueError, "x"),
    "x rank": (lambda a: a.update(x=torch.randn(3, 4, 1)), ValueError, "x"),
    "x dtype": (lambda a: a.update(x=a["x"].double()), TypeError, "x"),
    "x not a tensor": (lambda a: a.update(x=[[0.0] * 4] * 3), TypeError, "x"),
    "y dtype": (lambda a: a.update(y=a["y"].int()), TypeError, "y"),
    "y length": (lambda a: a.update(y=a["y"][:2]), ValueError, "y"),
    "label high": (lambda a: a.update(y=torch.tensor([0, 3, 1])), ValueError, "y"),
    "label negative": (lambda a: a.update(y=torch.tensor([0, -1, 1])), ValueError, "y"),
    "label high, new task": (lambda a: a.update(y=torch.tensor([0, 3, 1]), task=5), ValueError, "y"),
    "task negative": (lambda a: a.update(task=-1), ValueError, "task"),
    "task float": (lambda a: a.update(task=1.0), TypeError, "task"),
}


@pytest.mark.parametrize("name", sorted(RING_ADD_BAD))
def test_ring_add_bad_input_changes_nothing(name):
    fix, exc, word = RING_ADD_BAD[name]
    buf = RingBuffer(2, 3, 2, (4,))
    buf.add(torch.randn(4, 4), torch.tensor([0, 1, 1, 2]), 0)
    before = buf.state_dict()
    a = dict(x=torch.randn(3, 4), y=torch.tensor([0, 2, 1]), task=1)
    fix(a)
    with pytest.raises(exc, match=word):
        buf.add(a["x"], a["y"], a["task"])
    after = buf.state_dict()
    assert torch.equal(after["data"], before["data"]) and torch.equal(after["counts"], before["counts"])
    assert torch.equal(after["inserted"], before["inserted"])


@pytest.mark.parametrize("n,tasks,exc,word", [
    (-1, None, ValueError, "n"), (2.0, None, TypeError, "n"), (3, [0, 2], ValueError, "tasks"),
    (3, [-1], ValueError, "tasks"), (3, 1, TypeError, "tasks"), (3, torch.tensor([0]), TypeError, "tasks"),
    (3, [0.0], TypeError, "tasks"),
])
def test_ring_sample_bad_input(n, tasks, exc, word):
    buf = RingBuffer(2, 3, 2, (4,))
    buf.add(torch.randn(2, 4), torch.tensor([0, 1]), 0)
    with pytest.raises(exc, match=word):
        buf.sample(n, tasks)


def _ring_stream_step(buf, k, g):
    x = torch.randn(6, 4, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    buf.add(x, y, k % 3)
    return buf.sample(5, tasks=range(k % 3 + 1), generator=g)


def test_ring_state_dict_round_trip_resumes_exactly():
    ga, gb = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    a = RingBuffer(3, 3, 2, (4,))
    for k in range(7):
        _ring_stream_step(a, k, ga)
    state = a.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    b = RingBuffer(3, 3, 2, (4,))
    b.load_state_dict(loaded)
    assert torch.equal(b.data, a.data) and torch.equal(b.counts, a.counts) and b.inserted == a.inserted
    assert len(b) == len(a)
    gb.set_state(ga.get_state())
    for k in range(7, 15):  # continue both: identical storage and samples
        sa = _ring_stream_step(a, k, ga)
        sb = _ring_stream_step(b, k, gb)
        assert all(torch.equal(u, v) for u, v in zip(sa, sb))
    assert torch.equal(b.data, a.data) and torch.equal(b.counts, a.counts) and b.inserted == a.inserted
    # the state_dict taken earlier is a copy: the later adds did not change it
    assert torch.equal(state["data"], loaded["data"]) and torch.equal(state["counts"], loaded["counts"])
    assert not torch.equal(state["counts"], a.counts)


def test_ring_load_state_dict_rejects_mismatch_and_changes_nothing():
    a = RingBuffer(2, 3, 2, (4,))
    a.add(torch.randn(3, 4), torch.tensor([0, 1, 1]), 1)
    b = RingBuffer(2, 3, 2, (4,))
    b.add(torch.randn(2, 4), torch.tensor([2, 2]), 0)
    before = b.state_dict()
    bad = []
    s = a.state_dict(); s["per_class"] = 3; bad.append((s, "per_class"))
    s = a.state_dict(); s["dtype"] = torch.float64; bad.append((s, "dtype"))
    s = a.state_dict(); s["inserted"] = torch.tensor([1, 3]); bad.append((s, "inserted"))
    s = a.state_dict(); s["counts"] = s["counts"][:1]; bad.append((s, "counts"))
    s = a.state_dict(); del s["data"]; bad.append((s, "data"))
    for s, word in bad:
        with pytest.raises(ValueError, match=word):
            b.load_state_dict(s)
        after = b.state_dict()
        assert torch.equal(after["data"], before["data"]) and torch.equal(after["counts"], before["counts"])
        assert b.inserted == (2, 0)


@given(ring_streams(), st.integers(0, 12), st.integers(0, 2**31 - 1))
def test_ring_sample_without_replacement_is_a_random_subset(stream, n, seed):
    """replacement=False: min(n, N) distinct filled rows of the selected tasks, in random order."""
    num_tasks, num_classes, m, batches = stream
    buf = RingBuffer(num_tasks, num_classes, m, (3,), dtype=torch.float64)
    next_id = 1
    for task, labels in batches:
        buf.add(examples(range(next_id, next_id + len(labels))), torch.tensor(labels, dtype=torch.int64), task)
        next_id += len(labels)
    held = buf.tasks_with_data()
    if not held:
        return
    sel = held[: max(1, len(held) - 1)]
    filled = buf.counts[sel].clamp(max=m)
    n_filled = int(filled.sum())
    rows = buf.sample_indices(n, tasks=sel, generator=torch.Generator().manual_seed(seed), replacement=False)
    assert rows.numel() == min(n, n_filled) and rows.unique().numel() == rows.numel()
    for r in rows.tolist():  # every row is a filled slot of a selected task
        t, c, slot = r // (m * num_classes), r // m % num_classes, r % m
        assert t in sel and slot < int(buf.counts[t, c].clamp(max=m))
    x, y, t = buf.sample(n, tasks=sel, generator=torch.Generator().manual_seed(seed), replacement=False)
    assert torch.equal(x, buf.data[rows]) and torch.equal(y, rows // m % num_classes)
    assert torch.equal(t, rows // (m * num_classes))


@given(ring_streams(), st.integers(0, 2**31 - 1))
def test_ring_sample_without_replacement_follows_every_change(stream, seed):
    """The filled rows behind replacement=False are cached between draws: after every add, a state
    load (same insert counts, other labels) and a growth, a full draw is exactly the filled slots."""
    num_tasks, num_classes, m, batches = stream
    buf = RingBuffer(num_tasks, num_classes, m, (3,), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)

    def filled_rows(b, sel):
        return sorted(((t * num_classes + c) * m + k) for t in sel for c in range(num_classes)
                      for k in range(int(b.counts[t, c].clamp(max=m))))

    for i, (task, labels) in enumerate(batches):
        buf.add(examples(range(len(labels))), torch.tensor(labels, dtype=torch.int64), task)
        for sel in ([task], buf.tasks_with_data()):
            if not any(buf.inserted[t] for t in sel):
                continue
            got = buf.sample_indices(10**6, tasks=sel, generator=g, replacement=False)
            assert sorted(got.tolist()) == filled_rows(buf, sel)
            x, y, t = buf.sample(10**6, tasks=sel, generator=g, replacement=False)
            assert y.numel() == got.numel() and torch.equal(t.sort().values, (torch.tensor(filled_rows(buf, sel),
                                                              dtype=torch.int64) // (m * num_classes)).sort().values)
    held = buf.tasks_with_data()
    if not held:
        return
    other = RingBuffer(num_tasks, num_classes, m, (3,), dtype=torch.float64)
    for task, labels in batches:  # the same insert counts per task, every label shifted by one
        other.add(examples(range(len(labels))), (torch.tensor(labels, dtype=torch.int64) + 1) % num_classes, task)
    buf.sample_indices(1, tasks=held, generator=g, replacement=False)  # cache the current rows
    buf.load_state_dict(other.state_dict())
    assert sorted(buf.sample_indices(10**6, tasks=held, generator=g, replacement=False).tolist()) == filled_rows(buf, held)
    buf.reserve(num_tasks + 2)  # growth keeps the rows
    assert sorted(buf.sample_indices(10**6, tasks=held, generator=g, replacement=False).tolist()) == filled_rows(buf, held)


def test_ring_sample_without_replacement_is_uniform():
    """Each of the N filled slots is in a draw of k < N with probability k / N."""
    buf = RingBuffer(2, 3, 2, (1,))
    buf.add(torch.zeros(6, 1), torch.tensor([0, 0, 1, 1, 2, 2]), 0)
    buf.add(torch.zeros(1, 1), torch.tensor([1]), 1)
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(buf.capacity, dtype=torch.int64)
    draws = 4000
    for _ in range(draws):
        hits[buf.sample_indices(3, generator=g, replacement=False)] += 1
    filled = [0, 1, 2, 3, 4, 5, 8]  # task 1, class 1: ring row (1 * 3 + 1) * 2
    assert hits[[r for r in range(buf.capacity) if r not in filled]].sum() == 0
    assert chi2_stat(hits[filled], draws * 3 / 7) < chi2_critical(len(filled) - 1)


def test_ring_grows_past_num_tasks_and_keeps_its_contents():
    buf = RingBuffer(1, 2, 2, (3,), dtype=torch.float64)
    buf.add(examples([1, 2, 3]), torch.tensor([0, 1, 0]), 0)
    before = buf.data.clone()
    buf.add(examples([4]), torch.tensor([1]), 3)  # task 3 of a memory preallocated for 1
    assert buf.num_tasks == 4 and buf.capacity == 4 * 2 * 2 and buf.inserted == (3, 0, 0, 1)
    assert torch.equal(buf.data[:4], before) and buf.counts.shape == (4, 2)
    x, y, t = buf.sample(5, tasks=[3], replacement=False)
    assert x.shape[0] == 1 and int(y) == 1 and int(t) == 3 and float(x[0, 0]) == 4
    # a grown memory's state loads into a fresh, smaller one (which takes its size)
    fresh = RingBuffer(1, 2, 2, (3,), dtype=torch.float64)
    fresh.load_state_dict(buf.state_dict())
    assert fresh.num_tasks == 4 and torch.equal(fresh.data, buf.data) and fresh.inserted == buf.inserted
    with pytest.raises(ValueError, match="y"):  # a rejected batch of a new task does not grow it
        fresh.add(examples([5]), torch.tensor([2]), 6)
    assert fresh.num_tasks == 4
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(fresh.sample_indices(9, generator=g1), buf.sample_indices(9, generator=g2))


# ============================================================================ ReservoirBuffer
@given(st.integers(1, 8), st.lists(st.integers(0, 7), max_size=8), st.integers(0, 2**31 - 1))
def test_reservoir_capacity_and_consistency(capacity, batch_sizes, seed):
    g = torch.Generator().manual_seed(seed)
    buf = ReservoirBuffer(capacity, (2,), dtype=torch.float64)
    next_id, task_of = 1, {}
    for k, b in enumerate(batch_sizes):
        ids = torch.arange(next_id, next_id + b)
        slots = buf.add(examples(ids, (2,)), ids, k, generator=g)
        assert slots.shape == (b,) and bool(((slots >= -1) & (slots < capacity)).all())
        # within capacity example s goes to slot s
        s = torch.arange(buf.n_seen - b, buf.n_seen)
        assert torch.equal(slots[s < capacity], s[s < capacity])
        task_of.update({int(i): k for i in ids})
        next_id += b
    assert buf.n_seen == sum(batch_sizes)
    assert len(buf) == min(sum(batch_sizes), capacity)
    filled = len(buf)
    # every filled slot holds one distinct example, with its own label and task id
    vals = buf.data[:filled, 0].long()
    assert torch.equal(vals, buf.labels[:filled]) and bool((vals >= 1).all())
    assert vals.unique().numel() == filled
    assert all(task_of[int(v)] == int(t) for v, t in zip(vals, buf.tasks[:filled]))
    assert bool((buf.data[filled:] == 0).all())


def test_reservoir_inclusion_probability_is_k_over_n():
    # after a stream of n examples in batches of 4, each example is in the memory with
    # probability k/n; over many independent trials its count is Binomial(trials, k/n)
    k, n, trials = 5, 24, 2000
    g = torch.Generator().manual_seed(12)
    hits = torch.zeros(n, dtype=torch.int64)
    ids = torch.arange(n)
    for _ in range(trials):
        buf = ReservoirBuffer(k, (1,), dtype=torch.float64)
        for start in range(0, n, 4):
            buf.add(examples(ids[start:start + 4], (1,)), ids[start:start + 4], 0, generator=g)
        assert torch.equal(buf.data[:, 0].long(), buf.labels)
        hits[buf.labels] += 1
    p = k / n
    std = math.sqrt(trials * p * (1 - p))
    assert float((hits - trials * p).abs().max()) < 4.5 * std, hits.tolist()
    assert int(hits.sum()) == k * trials
    # and the early examples are not favoured over the late ones (nor the reverse)
    assert abs(float(hits[: n // 2].sum() - hits[n // 2:].sum())) < 4.5 * math.sqrt(trials * k / 2)


def test_reservoir_sampling_is_uniform_and_respects_tasks():
    buf = ReservoirBuffer(30, (1,), dtype=torch.float64)
    g = torch.Generator().manual_seed(13)
    for task in range(4):
        ids = torch.arange(task * 10, task * 10 + 10)
        buf.add(examples(ids, (1,)), ids, task, generator=g)
    idx = buf.sample_indices(30000, generator=g)
    hist = torch.bincount(idx, minlength=30)
    assert hist.numel() == 30
    assert chi2_stat(hist, 1000.0) < chi2_critical(29)
    x, y, t = buf.sample(500, tasks=[1, 3], generator=g)
    assert set(t.tolist()) <= {1, 3} and set(t.tolist()) == set(buf.tasks[torch.isin(buf.tasks, torch.tensor([1, 3]))].tolist())
    assert torch.equal(x[:, 0].long(), y) and torch.equal(y // 10, t)
    with pytest.raises(ValueError, match="tasks"):
        buf.sample(3, tasks=[7])
    with pytest.raises(ValueError, match="empty"):
        ReservoirBuffer(3, (1,)).sample(2)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(capacity=0), ValueError, "capacity"), (dict(capacity=2.0), TypeError, "capacity"),
    (dict(example_shape=(-2,)), ValueError, "example_shape"), (dict(dtype=torch.complex64), TypeError, "dtype"),
])
def test_reservoir_constructor_bad_input(kwargs, exc, word):
    args = dict(capacity=4, example_shape=(3,))
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        ReservoirBuffer(**args)


@pytest.mark.parametrize("name", ["x shape", "x dtype", "y dtype", "y length", "task negative"])
def test_reservoir_add_bad_input_changes_nothing(name):
    fix, exc, word = {
        "x shape": (lambda a: a.update(x=torch.randn(3, 2)), ValueError, "x"),
        "x dtype": (lambda a: a.update(x=a["x"].half()), TypeError, "x"),
        "y dtype": (lambda a: a.update(y=a["y"].float()), TypeError, "y"),
        "y length": (lambda a: a.update(y=a["y"][:1]), ValueError, "y"),
        "task negative": (lambda a: a.update(task=-1), ValueError, "task"),
    }[name]
    buf = ReservoirBuffer(4, (3,))
    buf.add(torch.randn(6, 3), torch.arange(6), 0)
    before = buf.state_dict()
    a = dict(x=torch.randn(3, 3), y=torch.arange(3), task=1)
    fix(a)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with pytest.raises(exc, match=word):
        buf.add(a["x"], a["y"], a["task"], generator=g)
    after = buf.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in ("data", "labels", "tasks"))
    assert buf.n_seen == 6 and torch.equal(g.get_state(), state)


def test_reservoir_state_dict_round_trip_resumes_exactly():
    ga = torch.Generator().manual_seed(14)
    a = ReservoirBuffer(8, (2, 2))

    def step(buf, k, g):
        x = torch.randn(5, 2, 2, generator=g)
        slots = buf.add(x, torch.randint(0, 9, (5,), generator=g), k % 2, generator=g)
        return (slots,) + buf.sample(4, generator=g)

    for k in range(6):
        step(a, k, ga)
    state = a.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = ReservoirBuffer(8, (2, 2))
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.n_seen == a.n_seen == 30 and len(b) == 8
    gb = torch.Generator()
    gb.set_state(ga.get_state())
    for k in range(6, 14):
        ra, rb = step(a, k, ga), step(b, k, gb)
        assert all(torch.equal(u, v) for u, v in zip(ra, rb))
    assert torch.equal(a.data, b.data) and torch.equal(a.labels, b.labels) and torch.equal(a.tasks, b.tasks)
    assert a.n_seen == b.n_seen == 70
    assert state["n_seen"] == 30  # a copy, not a view of the live memory
    s = a.state_dict()
    s["capacity"] = 9
    with pytest.raises(ValueError, match="capacity"):
        b.load_state_dict(s)
