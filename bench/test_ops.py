"""Fused ops vs eager chain / per-tensor loop / torch._foreach / torch.compile, with pytest-benchmark.

Parametrised op x case x impl x threads from :func:`fastcl.benchmarks.ops.plan`. Every impl is
checked against ``fastcl.ops.reference`` on its benchmark inputs before it is timed.
"""

import os

import pytest
import torch

from fastcl.benchmarks import ops as B

SIZES = os.environ.get("FASTCL_BENCH_SIZES", "full")
THREADS = [int(t) for t in os.environ.get("FASTCL_BENCH_THREADS", "1,2").split(",") if t.strip()]
COMPILE = os.environ.get("FASTCL_BENCH_COMPILE", "1") not in ("", "0")

GROUPS = B.plan(sizes=SIZES, compile=COMPILE)
CASES = [(op, case, impl) for op, case, impls in GROUPS for impl in impls]


def _id(x):
    return x.name.replace(" ", "") if isinstance(x, (B.Op, B.Case)) else str(x)


def _timed(benchmark, fn, group, nbytes, threads):
    benchmark.group = group
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["threads"] = threads
    torch.set_num_threads(threads)
    for _ in range(3):
        fn()
    benchmark(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable (one plain call)
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("op,case,impl", CASES, ids=_id)
def test_op(benchmark, op, case, impl, threads):
    if impl == "fused":
        ok, why = B.fused_available(op)
        if not ok:
            pytest.skip(why)
    torch.set_num_threads(threads)
    torch._dynamo.reset()
    base = op.make(case, 0)
    expected = B.expected_state(op, base)
    state = B.clone_state(base)
    del base
    fn = op.impls[impl](state)
    B.validate(op, impl, state, fn, expected)  # raises unless it computes what the reference does
    del expected
    _timed(benchmark, fn, f"{op.name} {case.name} t={threads}", B.bytes_moved(op, case), threads)


COPY_CASES = sorted({(op.name, case) for op, case, _ in GROUPS if op.kind == "update"}, key=lambda x: (x[0], x[1].name))


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("opname,case", COPY_CASES, ids=_id)
def test_copy(benchmark, opname, case, threads):
    """``dst.copy_(src)`` with src + dst the footprint of the op: the bandwidth reference."""
    op = B.OPS[opname]
    n = max(1, B.footprint(op, case) // (2 * B.ITEM))
    src, dst = torch.randn(n), torch.empty(n)
    _timed(benchmark, lambda: dst.copy_(src), f"{op.name} {case.name} t={threads}", 2 * n * B.ITEM, threads)
