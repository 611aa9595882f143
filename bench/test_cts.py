"""CTS end to end (T = 8 MLP learners, SGD momentum, a shift every step) with pytest-benchmark:
fastcl (vmap + fused trajectory_shift_) vs T nn.Module copies with torch.optim.SGD and a
per-tensor Python shift. ``fastcl bench cts`` prints the ratio table of the same cases."""

import pytest
import torch

from fastcl.benchmarks import cts as B


def _setup(sizes, batch, T=8):
    torch.manual_seed(0)
    model = B.MLP(sizes)
    x = torch.randn(T, batch, sizes[0])
    y = torch.randint(sizes[-1], (T, batch))
    return model, x, y


@pytest.mark.parametrize("sizes, batch", B.MODELS, ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("impl", ["fastcl", "modules"])
def test_cts_step(benchmark, sizes, batch, impl):
    torch.set_num_threads(1)
    model, x, y = _setup(sizes, batch)
    benchmark.group = f"cts-step-{'-'.join(map(str, sizes))}"
    if impl == "fastcl":
        learner = B._fastcl(model, 8)
        benchmark(learner.step, lambda m, k, t: (x, y))
    else:
        copies = B.ModuleCopies(model, 8)
        benchmark(copies.step, x, y)
