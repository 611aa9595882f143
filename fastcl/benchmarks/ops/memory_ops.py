"""The episodic-memory ops of the benchmark: ring insert + sample, ring sample, reservoir insert,
against per-example Python loops (Mammoth style) and the references."""

from __future__ import annotations

import torch

from fastcl import ops as fops
from fastcl.ops import reference as ref

from .cases import (
    BATCH, FEAT, FLOAT, ITEM, N_SAMPLE, NUM_CLASSES, NUM_TASKS, RESERVOIR_CAP, RESERVOIR_SEEN, RING_M,
    _memory_cases, Case, Op, State,
)


# ---------------------------------------------------------------------------- memory ops
ALL_TASKS = list(range(NUM_TASKS))
RING_ROWS = NUM_TASKS * NUM_CLASSES * RING_M
INSERT_TASK = NUM_TASKS - 1


def _ring_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {
        "data": torch.randn(RING_ROWS, FEAT, generator=g, dtype=FLOAT),
        # every ring full (and some already wrapped): the steady state of a long stream
        "counts": torch.randint(RING_M, 4 * RING_M, (NUM_TASKS, NUM_CLASSES), generator=g),
        "x": torch.randn(BATCH, FEAT, generator=g, dtype=FLOAT),
        "y": torch.randint(0, NUM_CLASSES, (BATCH,), generator=g),
        "gen": torch.Generator().manual_seed(seed + 1),
    }


def ring_insert_loop(data, counts, x, y, task):
    """Per-example insert: each example copied into its ring slot by indexing (Mammoth style)."""
    for i in range(x.shape[0]):
        c = int(y[i])
        slot = (task * NUM_CLASSES + c) * RING_M + int(counts[task, c]) % RING_M
        data[slot] = x[i]
        counts[task, c] += 1


def sample_randint(data, gen):
    """``randint`` + ``index_select`` over the filled rows (all rows: every ring is full)."""
    idx = torch.randint(0, data.shape[0], (N_SAMPLE,), generator=gen, device=data.device)
    return idx, data.index_select(0, idx)


def ring_insert_fused(data, counts, x, y, task):
    """The public fused op (looked up at call time, so tests can substitute it)."""
    fops.ring_insert_(data, counts, x, y, task)


def sample_fused(data, counts, gen):
    """``ring_sample_rows``: the draw and the gather of the rows in one call."""
    rows, _, _, idx = fops.ring_sample_rows(data, counts, ALL_TASKS, N_SAMPLE, gen)
    return idx, rows


def sample_reference(data, counts, gen):
    idx = ref.ring_sample(counts, RING_M, ALL_TASKS, N_SAMPLE, gen)
    return idx, data.index_select(0, idx)


def _ring_impl(insert, sample):
    def build(s):
        data, counts, x, y, gen = s["data"], s["counts"], s["x"], s["y"], s["gen"]
        if insert is None:
            if sample is sample_randint:
                return lambda: sample(data, gen)
            return lambda: sample(data, counts, gen)

        def step():
            insert(data, counts, x, y, INSERT_TASK)
            if sample is sample_randint:
                return sample(data, gen)
            return sample(data, counts, gen)

        return step

    return build


def _check_sample(idx, rows, state):
    if idx.dtype != torch.int64 or idx.shape != (N_SAMPLE,):
        raise AssertionError(f"sample returned {idx.dtype} {tuple(idx.shape)}; expected int64 [{N_SAMPLE}]")
    if int(idx.min()) < 0 or int(idx.max()) >= RING_ROWS:
        raise AssertionError(f"sampled rows outside [0, {RING_ROWS})")
    torch.testing.assert_close(rows, state["data"][idx], rtol=0, atol=0)


def _ring_check(impl: str, state: State, expected: State, result, expected_result) -> None:
    torch.testing.assert_close(state["data"], expected["data"], rtol=0, atol=0)
    torch.testing.assert_close(state["counts"], expected["counts"], rtol=0, atol=0)
    _check_sample(*result, state)


def _ring_expected(state: State):
    ref.ring_insert_(state["data"], state["counts"], state["x"], state["y"], INSERT_TASK)
    return sample_reference(state["data"], state["counts"], state["gen"])


def _ring_bytes(case: Case) -> int:
    # insert: x read + rows written + labels read + counter read/written, per example;
    # sample: indices written and read, rows read and written.
    return BATCH * (2 * FEAT * ITEM + 8 + 16) + N_SAMPLE * (16 + 2 * FEAT * ITEM)


def _sample_bytes(case: Case) -> int:
    return N_SAMPLE * (16 + 2 * FEAT * ITEM)


RING_OP = Op(
    name="ring_insert+sample",
    kind="memory",
    cases=_memory_cases,
    make=_ring_make,
    impls={
        "fused": _ring_impl(ring_insert_fused, sample_fused),
        "loop": _ring_impl(ring_insert_loop, sample_randint),
        "reference": _ring_impl(ref.ring_insert_, sample_reference),
    },
    check=_ring_check,
    mem_bytes=_ring_bytes,
    doc=f"{NUM_TASKS} tasks x {NUM_CLASSES} classes x m={RING_M}, insert B={BATCH} into task "
        f"{INSERT_TASK}, sample n={N_SAMPLE} from all tasks + index_select",
)

SAMPLE_OP = Op(
    name="ring_sample",
    kind="memory",
    cases=_memory_cases,
    make=_ring_make,
    impls={
        "fused": _ring_impl(None, sample_fused),
        "reference": _ring_impl(None, sample_reference),
        "randint": _ring_impl(None, sample_randint),
    },
    check=lambda impl, s, e, r, er: _check_sample(*r, s),
    mem_bytes=_sample_bytes,
    doc=f"n={N_SAMPLE} from {RING_ROWS} full slots + index_select",
)


def _reservoir_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {
        "data": torch.randn(RESERVOIR_CAP, FEAT, generator=g, dtype=FLOAT),
        "labels": torch.randint(0, NUM_CLASSES, (RESERVOIR_CAP,), generator=g),
        "tasks": torch.randint(0, NUM_TASKS, (RESERVOIR_CAP,), generator=g),
        "x": torch.randn(BATCH, FEAT, generator=g, dtype=FLOAT),
        "y": torch.randint(0, NUM_CLASSES, (BATCH,), generator=g),
        "gen": torch.Generator().manual_seed(seed + 1),
    }


def reservoir_loop(data, labels, tasks, x, y, task, n_seen, gen):
    """Algorithm R one example at a time, one uniform draw per example (Mammoth style)."""
    cap = data.shape[0]
    slots = []
    for i in range(x.shape[0]):
        s = n_seen + i
        if s < cap:
            j = s
        else:
            j = int(torch.rand((), generator=gen, dtype=torch.float64, device=data.device) * (s + 1))
        if j < cap:
            data[j] = x[i]
            labels[j] = y[i]
            tasks[j] = task
            slots.append(j)
        else:
            slots.append(-1)
    return torch.tensor(slots)


def _reservoir_impl(fn_getter):
    def build(s):
        fn = fn_getter()
        args = (s["data"], s["labels"], s["tasks"], s["x"], s["y"], INSERT_TASK, RESERVOIR_SEEN, s["gen"])
        return lambda: fn(*args)

    return build


def _reservoir_expected(state: State):
    return ref.reservoir_insert_(state["data"], state["labels"], state["tasks"], state["x"], state["y"],
                                 INSERT_TASK, RESERVOIR_SEEN, state["gen"])


def _reservoir_check(impl, state, expected, result, expected_result):
    # Every impl draws B uniforms from a generator seeded alike: the same slots, the same state.
    torch.testing.assert_close(result, expected_result, rtol=0, atol=0)
    for k in ("data", "labels", "tasks"):
        torch.testing.assert_close(state[k], expected[k], rtol=0, atol=0)


RESERVOIR_OP = Op(
    name="reservoir_insert_",
    kind="memory",
    cases=_memory_cases,
    make=_reservoir_make,
    impls={
        "fused": _reservoir_impl(lambda: fops.reservoir_insert_),  # looked up when built
        "loop": _reservoir_impl(lambda: reservoir_loop),
        "reference": _reservoir_impl(lambda: ref.reservoir_insert_),
    },
    check=_reservoir_check,
    mem_bytes=lambda c: BATCH * (2 * FEAT * ITEM + 8 * 5),
    # one uniform per call from a CUDA (Philox) generator is not the same sequence as B at once
    cpu_only=("loop",),
    doc=f"capacity {RESERVOIR_CAP}, {RESERVOIR_SEEN} seen, B={BATCH}",
)
