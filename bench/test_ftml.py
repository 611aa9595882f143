"""pytest-benchmark suite of FTML's meta-gradient: ``pytest bench/test_ftml.py --benchmark-only``.

The cases are those of :mod:`fastcl.benchmarks.ftml` (``python -m fastcl.benchmarks.ftml`` prints
the ratio table): fastcl's torch.func meta-gradient (K tasks under vmap) against a per-task loop
of plain autograd, 1 thread, second and first order, K in {1, 4}, 5 inner steps.
"""

import pytest
import torch

from fastcl.algorithms.ftml import FTML, FTMLConfig
from fastcl.benchmarks.ftml import SHAPE, loop_meta_gradient
from fastcl.models import ConvNet


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("tasks", [1, 4])
@pytest.mark.parametrize("impl", ["fastcl", "loop"])
def test_meta_gradient(benchmark, impl, tasks, first_order):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ConvNet()
    learner = FTML(model, SHAPE, FTMLConfig(inner_steps=5, first_order=first_order, meta_batch=tasks))
    x_tr, x_val = torch.rand(tasks, 10, *SHAPE), torch.rand(tasks, 10, *SHAPE)
    y_tr, y_val = torch.randint(0, 10, (tasks, 10)), torch.randint(0, 10, (tasks, 10))
    benchmark.group = f"ftml meta-gradient K={tasks} {'first' if first_order else 'second'} order"
    if impl == "fastcl":
        benchmark(learner.meta_gradient, x_tr, y_tr, x_val, y_val)
    else:
        benchmark(loop_meta_gradient, model, x_tr, y_tr, x_val, y_val, steps=5, first_order=first_order)
