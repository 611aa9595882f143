"""MAML / FOMAML meta-iteration time with pytest-benchmark: ``pytest bench/test_maml.py --benchmark-only``.

Cases and implementations of :mod:`fastcl.benchmarks.maml` (the ``fastcl bench maml`` command):
a per-task autograd loop, fastcl's vmapped MAML (reference and fused inner update) and
vmap(grad). Each (order, meta-batch, inner steps) is one group; every impl's meta-gradient is
checked against the loop's first. ``FASTCL_BENCH_THREADS`` (default ``1``) pins the threads.
"""

import os

import pytest
import torch

from fastcl.benchmarks import maml as B

THREADS = [int(t) for t in os.environ.get("FASTCL_BENCH_THREADS", "1").split(",") if t.strip()]


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("impl", B.IMPLS)
@pytest.mark.parametrize("second_order,meta_batch,inner_steps", B.CASES,
                         ids=lambda v: str(v))
def test_meta_iteration(benchmark, second_order, meta_batch, inner_steps, impl, threads):
    torch.set_num_threads(threads)
    if impl == B.IMPLS[1]:
        B.check(second_order, meta_batch, inner_steps)
    tasks = B._tasks(meta_batch)
    step, _ = B.make_step(impl, second_order, inner_steps)
    for _ in range(3):
        step(tasks)
    benchmark.group = f"{'second' if second_order else 'first'} order, meta-batch {meta_batch}, {inner_steps} step(s), t{threads}"
    benchmark(step, tasks)
