"""Time per incoming batch of the meta-continual learners (``fastcl bench emcl``).

The MNIST Permutations setting of EMCL / La-MAML: MLP 784-100-100-10, batches of 10 from the
stream, 5 glances, a reservoir memory of 200 and 10 replayed examples per meta-update (EMCL's
``emcl-replay``; the default ``emcl``, Algorithm 1, has no memory). Cases:
EMCL on the fused ops (the inner loop of each glance one ``mlp_prox_steps_`` call), the same
EMCL with one fused ``prox_sgd_`` call per inner step after by-hand gradients
(``fused_inner=False``, the default before the fused inner loop), the same EMCL on the
pure-PyTorch references (``reference=True``),
the fused EMCL with its inner loop on the 10 incoming examples only (``inner_replay=False``; the
default runs it on the 20 of batch + replay), fastcl's La-MAML first and second order, and ER on the same model (one SGD step on
batch + replay per incoming batch, no glances) as the floor. Each learner first trains on
``warmup`` batches (so that the memory is full and replay runs), then ``batches`` are timed;
the cases are interleaved over ``repeats`` rounds and the median taken. The public La-MAML code
is not run here (it is not a dependency); the issue quotes its throughput on this machine
(313 examples/s first order, 226 second order, 5 glances, memory 200) for comparison.

:func:`run_inner_loop` times one glance's inner loop alone (k = 20 single-example steps of
batch + replay on the same MLP, Table II's beta = 0.15 and gamma*lambda = 3) in the ways it
can be written: the fused ``mlp_prox_steps_``; per step, by-hand gradients
(:func:`~fastcl.algorithms.lamaml.mlp_grads` into reused buffers) and a fused ``prox_sgd_``;
the same with the prox written as ``torch._foreach_*`` ops; per step, autograd gradients and a
fused ``prox_sgd_``; the reference (autograd, ``reference.prox_sgd_``); and, with
``compile=True`` (``--compile``: about 20 s of compilation), ``torch.compile`` of one step written
in plain torch ops (by-hand gradient and prox expression). Calls are interleaved in rounds and
the median per call taken.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Callable

import torch

from .. import ops
from ..algorithms import EMCL, EMCLConfig, LaMAML, LaMAMLConfig
from ..algorithms.lamaml import mlp_grads
from ..data.streams import permuted_mnist
from ..models import MLP
from ..ops import reference

__all__ = ["CASES", "COMPILED", "INNER_LOOPS", "make_learner", "time_per_batch", "run", "run_inner_loop", "add_arguments",
           "main"]

#: the quoted throughput of the public La-MAML code on this machine (examples/s; EMCL issue)
PUBLIC_LAMAML = {"first order": 313.0, "second order": 226.0}


class _ReplayER(LaMAML):
    """ER with the reservoir of the meta-learners: one SGD step (lr 0.1) on batch + replay."""

    def meta_update(self, x, y, task, bx, by, btasks) -> float:
        loss = self.loss(bx, by, btasks)
        self.sgd_step(loss, 0.1)
        return float(loss.detach())


CASES: dict[str, Callable[[torch.nn.Module, int], object]] = {
    "EMCL fused": lambda m, g: EMCL(m, 10, (784,), EMCLConfig(glances=g, memory_size=200)),
    "EMCL fused, per-step inner loop (by-hand gradients + prox_sgd_)": lambda m, g: EMCL(
        m, 10, (784,), EMCLConfig(glances=g, memory_size=200, fused_inner=False)),
    "EMCL reference": lambda m, g: EMCL(m, 10, (784,), EMCLConfig(glances=g, memory_size=200, reference=True)),
    "EMCL fused, inner loop on the 10 incoming": lambda m, g: EMCL(
        m, 10, (784,), EMCLConfig(glances=g, memory_size=200, inner_replay=False)),
    "La-MAML first order": lambda m, g: LaMAML(m, 10, (784,), LaMAMLConfig(glances=g, second_order=False)),
    "La-MAML second order": lambda m, g: LaMAML(m, 10, (784,), LaMAMLConfig(glances=g)),
    "ER (reservoir, 1 step)": lambda m, g: _ReplayER(m, 10, (784,), LaMAMLConfig(glances=1)),
}


def make_learner(name: str, glances: int = 5):
    torch.manual_seed(0)
    return CASES[name](MLP((784, 100, 100, 10)), glances)


def time_per_batch(learner, xs: torch.Tensor, ys: torch.Tensor, warmup: int) -> float:
    """Seconds per incoming batch over ``xs[warmup:]`` after training on ``xs[:warmup]``."""
    for i in range(warmup):
        learner.observe(xs[i], ys[i], 0)
    begin = time.perf_counter()
    for i in range(warmup, xs.shape[0]):
        learner.observe(xs[i], ys[i], 0)
    return (time.perf_counter() - begin) / (xs.shape[0] - warmup)


def run(batches: int = 40, warmup: int = 25, glances: int = 5, threads: int = 1, repeats: int = 3,
        cases=None, log=print) -> dict:
    """Median seconds per incoming batch of each case; prints a markdown table with the ratios."""
    torch.set_num_threads(threads)
    cases = list(cases or CASES)
    task = permuted_mnist(num_tasks=1, per_task=10 * (batches + warmup), seed=0)[0]
    xs = task.x_train.reshape(batches + warmup, 10, 784)
    ys = task.y_train.reshape(batches + warmup, 10)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):  # interleaved, so load changes hit every case alike
        for name in cases:
            times[name].append(time_per_batch(make_learner(name, glances), xs, ys, warmup))
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    lines = [f"MNIST Permutations setting: MLP 784-100-100-10, batch 10, {glances} glances, memory 200, "
             f"10 replayed; {threads} thread(s), median of {repeats} x {batches} batches", "",
             "| learner | ms / batch | examples/s | EMCL fused speed-up | vs public La-MAML FO / SO |",
             "|---|---:|---:|---:|---:|"]
    fused = med.get("EMCL fused")
    for name, sec in med.items():
        eps = 10 / sec
        ratio = f"{sec / fused:.2f}x" if fused else "-"
        lines.append(f"| {name} | {sec * 1e3:.2f} | {eps:,.0f} | {ratio} | "
                     f"{eps / PUBLIC_LAMAML['first order']:.1f}x / {eps / PUBLIC_LAMAML['second order']:.1f}x |")
    log("\n".join(lines))
    return {"seconds_per_batch": med, "all": times, "threads": threads, "glances": glances, "batches": batches}


def _per_step(grad_fn, step_fn):
    def inner(model, p, x, y, a, h, lr, prox, bufs):
        for i in range(x.shape[0]):
            step_fn(p, grad_fn(model, p, x[i:i + 1], y[i:i + 1], bufs), a, h, lr, prox)
    return inner


def _by_hand(model, p, x, y, bufs):
    return mlp_grads(model, p, x, y, None, False, bufs)[1]


def _autograd(model, p, x, y, bufs):
    return reference.mlp_loss_grads(p, x, y)


def _foreach_prox(p, g, a, h, lr, prox):
    """(p - lr*g + c*a) / (c + 1), c = prox*h, in foreach ops."""
    c = torch._foreach_mul(h, prox)
    num = torch._foreach_add(p, g, alpha=-lr)
    torch._foreach_addcmul_(num, c, a)
    torch._foreach_add_(c, 1.0)
    torch._foreach_div_(num, c)
    torch._foreach_copy_(p, num)


def _torch_step(p, x, y, a, h, lr: float, prox: float):
    """One example's step in plain torch ops, for torch.compile: the by-hand MLP gradient (as
    :func:`~fastcl.algorithms.lamaml.mlp_grads`) and ``(p - lr*g + c*a) / (c + 1)``, c = prox*h."""
    acts, z = [], x
    for i in range(0, len(p), 2):
        acts.append(z)
        z = torch.addmm(p[i + 1], z, p[i].t())
        if i + 2 < len(p):
            z = z.relu()
    d = torch.softmax(z, 1) - torch.nn.functional.one_hot(y, z.shape[1]).to(z.dtype)
    g = [None] * len(p)
    for i in range(len(p) - 2, -1, -2):
        g[i], g[i + 1] = d.t() @ acts[i // 2], d.sum(0)
        if i > 0:
            d = (d @ p[i]) * (acts[i // 2] > 0)
    return [(pi - lr * gi + prox * hi * ai) / (prox * hi + 1) for pi, gi, ai, hi in zip(p, g, a, h)]


@functools.cache
def _compiled_step():
    return torch.compile(_torch_step, fullgraph=True, dynamic=False)


def _out_of_place(get_step):
    """The inner loop of an out-of-place step function (``get_step()``: params in, new params out)."""
    def loop(model, p, x, y, a, h, lr, prox, bufs):
        q = list(p)
        for i in range(x.shape[0]):
            q = get_step()(q, x[i:i + 1], y[i:i + 1], a, h, lr, prox)
        torch._foreach_copy_(p, q)
    return loop


#: the inner-loop case that needs torch.compile (left out of :func:`run_inner_loop` by default)
COMPILED = "per step: torch.compile(by-hand gradient + prox), out of place"

#: one glance's inner loop, written several ways: (model, params, x, y, anchors, importance, lr, prox, buffers)
INNER_LOOPS: dict[str, Callable] = {
    "fused mlp_prox_steps_ (one call)": lambda m, p, x, y, a, h, lr, prox, bufs: ops.mlp_prox_steps_(
        p, x, y, a, h, lr, prox),
    "per step: by-hand gradients + fused prox_sgd_": _per_step(_by_hand, ops.prox_sgd_),
    "per step: by-hand gradients + foreach prox": _per_step(_by_hand, _foreach_prox),
    "per step: autograd gradients + fused prox_sgd_": _per_step(_autograd, ops.prox_sgd_),
    "reference (autograd + reference.prox_sgd_)": lambda m, p, x, y, a, h, lr, prox, bufs: reference.mlp_prox_steps_(
        p, x, y, a, h, lr, prox),
    COMPILED: _out_of_place(_compiled_step),
}


def run_inner_loop(k: int = 20, threads: int = 1, rounds: int = 7, calls: int = 5, cases=None, compile: bool = False,
                   log=print) -> dict:
    """Median seconds per inner loop (k steps) of each way in :data:`INNER_LOOPS` (the
    torch.compile case only with ``compile``); prints a markdown table with the ratios to the
    fused op."""
    torch.set_num_threads(threads)
    cases = list(cases or [name for name in INNER_LOOPS if compile or name != COMPILED])
    torch.manual_seed(0)
    model = MLP((784, 100, 100, 10))
    theta0 = [t.detach().clone() for t in model.parameters()]
    # importance of the size Eq. 13 gives this MLP (~1e-6 .. 1e-3) would make the prox a no-op
    # numerically; a uniform h in [0, 1) makes every term count, at the same cost
    importance = [torch.rand_like(t) for t in theta0]
    task = permuted_mnist(num_tasks=1, per_task=k, seed=0)[0]
    x, y = task.x_train[:k].reshape(k, 784), task.y_train[:k]
    lr, prox = 0.15, 3.0
    states = {name: [t.clone() for t in theta0] for name in cases}
    bufs = {name: [torch.empty_like(t) for t in theta0] for name in cases}
    results = {}
    for name in cases:  # every way computes the same steps (checked once, from theta0)
        INNER_LOOPS[name](model, states[name], x, y, theta0, importance, lr, prox, bufs[name])
        results[name] = [t.clone() for t in states[name]]
    for name in cases:
        for got, want in zip(results[name], results[cases[0]]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{name} computes other steps")
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name in cases:
            p = states[name]
            begin = time.perf_counter()
            for _ in range(calls):
                torch._foreach_copy_(p, theta0)  # every call starts at theta0, as in EMCL
                INNER_LOOPS[name](model, p, x, y, theta0, importance, lr, prox, bufs[name])
            times[name].append((time.perf_counter() - begin) / calls)
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    fused = med[cases[0]]
    lines = [f"EMCL inner loop alone: MLP 784-100-100-10, k = {k} single-example steps, beta 0.15, "
             f"gamma*lambda 3; {threads} thread(s), median of {rounds} rounds x {calls} calls", "",
             "| inner loop | us / loop | us / step | time vs fused |", "|---|---:|---:|---:|"]
    for name, sec in med.items():
        lines.append(f"| {name} | {sec * 1e6:,.0f} | {sec / k * 1e6:,.1f} | {sec / fused:.2f}x |")
    log("\n".join(lines))
    return {"seconds_per_loop": med, "all": times, "threads": threads, "k": k}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batches", type=int, default=40, help="timed incoming batches per run")
    p.add_argument("--warmup", type=int, default=25, help="untimed batches first (fills the memory)")
    p.add_argument("--glances", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--inner-only", action="store_true", help="only the inner-loop table (fast)")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile of the per-step loop to the inner-loop table (~20 s to compile)")


def main(args: argparse.Namespace) -> int:
    run_inner_loop(threads=args.threads, compile=args.compile)
    if not args.inner_only:
        print()
        run(args.batches, args.warmup, args.glances, args.threads, args.repeats)
    return 0
