"""pytest-benchmark suites of fastcl's fused ops: ``pytest bench --benchmark-only``.

The cases, impls, inputs and correctness checks are those of :mod:`fastcl.benchmarks.ops`
(the ``fastcl bench ops`` command); this suite only times them with pytest-benchmark.
Environment (read by test_ops.py):

* ``FASTCL_BENCH_SIZES``: ``full`` (default), ``quick`` or ``tiny``;
* ``FASTCL_BENCH_THREADS``: comma-separated thread counts (default ``1,2``);
* ``FASTCL_BENCH_COMPILE``: ``0`` to skip the torch.compile impls (default ``1``).

Each (op, case, threads) is one pytest-benchmark group, with a ``copy_`` row of the same
footprint beside it, so ``--benchmark-group-by=group`` (the default here) compares them.
"""

import pytest
import torch


def pytest_configure(config):
    # Group rows by (op, case, threads) unless the user chose a grouping.
    if getattr(config.option, "benchmark_group_by", None) in (None, "group"):
        config.option.benchmark_group_by = "group"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    torch._dynamo.reset()
