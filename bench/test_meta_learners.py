"""Time per incoming batch of EMCL (fused / per-step / reference) and La-MAML (first / second
order), and the EMCL inner loop alone written several ways, with pytest-benchmark:
``pytest bench/test_meta_learners.py --benchmark-only``.

The learners and the setting (MNIST Permutations: MLP 784-100-100-10, batch 10, 5 glances,
memory 200) are those of :mod:`fastcl.benchmarks.meta_learners` (``fastcl bench emcl``). One
thread; every learner first trains on 25 batches so the memory is full and replay runs.
"""

import pytest
import torch

from fastcl.benchmarks import meta_learners as B
from fastcl.data.streams import permuted_mnist


@pytest.fixture(scope="module")
def batches():
    task = permuted_mnist(num_tasks=1, per_task=400, seed=0)[0]
    return task.x_train.reshape(40, 10, 784), task.y_train.reshape(40, 10)


@pytest.mark.parametrize("name", list(B.CASES))
def test_time_per_incoming_batch(benchmark, batches, name):
    torch.set_num_threads(1)
    xs, ys = batches
    learner = B.make_learner(name)
    for i in range(25):
        learner.observe(xs[i], ys[i], 0)
    it = iter(range(10 ** 9))

    def step():
        i = 25 + next(it) % 15
        learner.observe(xs[i], ys[i], 0)

    benchmark.group = "meta-learners: time per incoming batch (5 glances)"
    benchmark(step)


@pytest.mark.parametrize("name", list(B.INNER_LOOPS))
def test_inner_loop(benchmark, name):
    """One glance's EMCL inner loop (k = 20 single-example steps) written each way of
    :data:`fastcl.benchmarks.meta_learners.INNER_LOOPS`."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = B.MLP((784, 100, 100, 10))
    theta0 = [t.detach().clone() for t in model.parameters()]
    importance = [torch.rand_like(t) for t in theta0]
    params = [t.clone() for t in theta0]
    bufs = [torch.empty_like(t) for t in theta0]
    task = permuted_mnist(num_tasks=1, per_task=20, seed=0)[0]
    x, y = task.x_train.reshape(20, 784), task.y_train

    def loop():
        torch._foreach_copy_(params, theta0)
        B.INNER_LOOPS[name](model, params, x, y, theta0, importance, 0.15, 3.0, bufs)

    loop()  # warm-up (compiles the torch.compile case)
    benchmark.group = "EMCL inner loop: k = 20 steps, MLP 784-100-100-10"
    benchmark(loop)
