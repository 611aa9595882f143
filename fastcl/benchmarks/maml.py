"""Meta-iteration time of MAML / FOMAML on sinusoids (``fastcl bench maml``).

One meta-iteration = inner loop on every task of the meta-batch, query loss, meta-gradient and
Adam step, on the 1-40-40-1 ReLU MLP with K = 10 support and 10 query points per task. Cases:
second and first order, meta-batch 4 and 32, 1 and 5 inner steps. Implementations:

* ``loop``: a per-task Python loop of plain autograd, the way learn2learn and higher run MAML
  (``functional_call`` on each task's fast weights, ``torch.autograd.grad`` per task, backward
  of each task's query loss);
* ``vmapped``: :class:`fastcl.algorithms.MAML` (stacked fast weights, one vmapped forward and one
  ``autograd.grad`` for all tasks), inner update ``p - alpha*g``, the default;
* ``vmapped+fused``: the same with the fused differentiable ``ops.prox_sgd`` as inner update;
* ``vmap(grad)``: ``torch.func.vmap`` over a per-task function that takes its inner gradients with
  ``torch.func.grad`` (the all-functorch form).

Every implementation's meta-gradient is checked against the loop's before it is timed. Times are
medians over interleaved rounds in one process, thread count pinned.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ..algorithms import MAML, MAMLConfig
from ..data.meta_tasks import SINUSOID_FAMILIES, TaskBatch
from ..models import MLP

__all__ = ["IMPLS", "CASES", "make_step", "run", "add_arguments", "main"]

IMPLS = ("loop", "vmapped", "vmapped+fused", "vmap(grad)")
#: (second order, meta-batch, inner steps)
CASES = [(so, b, s) for so in (True, False) for b in (4, 32) for s in (1, 5)]
SHOTS = 10
INNER_LR = 0.01


def _tasks(meta_batch: int, seed: int = 0) -> TaskBatch:
    return SINUSOID_FAMILIES["sinusoid"].sample(meta_batch, SHOTS, SHOTS, generator=torch.Generator().manual_seed(seed))


def make_step(impl: str, second_order: bool, inner_steps: int, seed: int = 0) -> tuple[Callable, Callable]:
    """``(step(tasks), grads(tasks))``: one full meta-iteration of ``impl``, and its meta-gradient
    (for the correctness check) from the same initial model."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    torch.manual_seed(seed)
    model = MLP((1, 40, 40, 1))
    if impl in ("vmapped", "vmapped+fused"):
        learner = MAML(model, MAMLConfig(inner_steps=inner_steps, inner_lr=INNER_LR, first_order=not second_order,
                                         fused_inner=impl == "vmapped+fused"))
        return learner.meta_step, lambda t: torch.autograd.grad(learner.outer_loss(t), learner.params)
    names = [n for n, _ in model.named_parameters()]
    theta = list(model.parameters())
    opt = torch.optim.Adam(theta, lr=1e-3)

    def loss(params, x, y):
        return F.mse_loss(functional_call(model, dict(zip(names, params)), (x,)), y)

    if impl == "loop":
        def meta_loss(tasks, backward):
            b = tasks.num_tasks
            total = 0.0
            for i in range(b):
                fast = theta
                for _ in range(inner_steps):
                    g = torch.autograd.grad(loss(fast, tasks.support_x[i], tasks.support_y[i]), fast,
                                            create_graph=second_order)
                    fast = [p - INNER_LR * gi for p, gi in zip(fast, g)]
                q = loss(fast, tasks.query_x[i], tasks.query_y[i]) / b
                if backward:
                    q.backward()  # per task, as learn2learn / higher examples do
                else:
                    total = total + q
            return total
    else:  # vmap(grad)
        def per_task(params, xs, ys, xq, yq):
            for _ in range(inner_steps):
                g = grad(loss)(params, xs, ys)
                if not second_order:
                    g = [gi.detach() for gi in g]
                params = [p - INNER_LR * gi for p, gi in zip(params, g)]
            return loss(params, xq, yq)

        def meta_loss(tasks, backward):
            total = vmap(per_task, in_dims=(None, 0, 0, 0, 0))(theta, *tasks).mean()
            if backward:
                total.backward()
            return total

    def step(tasks):
        opt.zero_grad(set_to_none=True)
        meta_loss(tasks, True)
        opt.step()

    def grads(tasks):
        return torch.autograd.grad(meta_loss(tasks, False), theta)

    return step, grads


def check(second_order: bool, meta_batch: int, inner_steps: int) -> None:
    """Every impl's meta-gradient equals the loop's on the benchmark inputs."""
    tasks = _tasks(meta_batch)
    want = make_step("loop", second_order, inner_steps)[1](tasks)
    for impl in IMPLS[1:]:
        got = make_step(impl, second_order, inner_steps)[1](tasks)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=lambda m: f"{impl}: {m}")


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _time(step, tasks, min_seconds: float, clock: Callable[[], float]) -> float:
    n, begin = 0, clock()
    while True:
        step(tasks)
        n += 1
        elapsed = clock() - begin
        if elapsed >= min_seconds and n >= 3:
            return elapsed / n


def run(threads: int = 1, rounds: int = 5, min_seconds: float = 0.2, quick: bool = False, clock: str = "cpu",
        log=print) -> dict:
    """Median ms per meta-iteration of every impl and case; prints a markdown table.

    ``clock="cpu"`` times with the process CPU clock (with one thread, the time the process ran:
    less disturbed by other jobs on a shared machine than wall time), ``"wall"`` with perf_counter.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    torch.set_num_threads(threads)
    cases = CASES[:4] if quick else CASES
    results = {}
    for so, b, s in cases:
        check(so, b, s)
        tasks = _tasks(b)
        steps = {impl: make_step(impl, so, s)[0] for impl in IMPLS}
        for step in steps.values():  # warm-up
            for _ in range(3):
                step(tasks)
        times = {impl: [] for impl in IMPLS}
        for _ in range(rounds):  # interleaved, so load changes hit every impl alike
            for impl, step in steps.items():
                times[impl].append(_time(step, tasks, min_seconds, CLOCKS[clock]))
        results[(so, b, s)] = {impl: sorted(v)[len(v) // 2] * 1e3 for impl, v in times.items()}
    lines = [f"MAML meta-iteration on sinusoids, MLP 1-40-40-1, K = {SHOTS} support + {SHOTS} query, "
             f"{threads} thread(s), {clock} clock, median of {rounds} interleaved rounds; ms per meta-iteration "
             "(speed-up over the per-task loop)", "",
             "| order | meta-batch | inner steps | " + " | ".join(IMPLS) + " |",
             "|---|---:|---:|" + "---:|" * len(IMPLS)]
    for (so, b, s), ms in results.items():
        cells = [f"{ms['loop']:.2f}"] + [f"{ms[i]:.2f} ({ms['loop'] / ms[i]:.1f}x)" for i in IMPLS[1:]]
        lines.append(f"| {'second' if so else 'first'} | {b} | {s} | " + " | ".join(cells) + " |")
    log("\n".join(lines))
    return {"threads": threads, "clock": clock, "ms": {f"{'second' if so else 'first'}-b{b}-s{s}": v for (so, b, s), v in results.items()}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    p.add_argument("--min-seconds", type=float, default=0.2, help="minimum time per impl per round")
    p.add_argument("--quick", action="store_true", help="second order only")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                   help="cpu: process CPU time (default; steadier on a shared machine), wall: perf_counter")


def main(args: argparse.Namespace) -> int:
    run(args.threads, args.rounds, args.min_seconds, args.quick, args.clock)
    return 0
