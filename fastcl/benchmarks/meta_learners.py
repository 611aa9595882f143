"""Time per incoming batch of the meta-continual learners (``fastcl bench emcl``).

The MNIST Permutations setting of EMCL / La-MAML: MLP 784-100-100-10, batches of 10 from the
stream, 5 glances, a reservoir memory of 200 and 10 replayed examples per meta-update. Cases:
EMCL on the fused ops, the same EMCL on the pure-PyTorch references (``reference=True``),
the fused EMCL with its inner loop on the 10 incoming examples only (``inner_replay=False``; the
default runs it on the 20 of batch + replay), fastcl's La-MAML first and second order, and ER on the same model (one SGD step on
batch + replay per incoming batch, no glances) as the floor. Each learner first trains on
``warmup`` batches (so that the memory is full and replay runs), then ``batches`` are timed;
the cases are interleaved over ``repeats`` rounds and the median taken. The public La-MAML code
is not run here (it is not a dependency); the issue quotes its throughput on this machine
(313 examples/s first order, 226 second order, 5 glances, memory 200) for comparison.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from ..algorithms import EMCL, EMCLConfig, LaMAML, LaMAMLConfig
from ..data.streams import permuted_mnist
from ..models import MLP

__all__ = ["CASES", "make_learner", "time_per_batch", "run", "add_arguments", "main"]

#: the quoted throughput of the public La-MAML code on this machine (examples/s; EMCL issue)
PUBLIC_LAMAML = {"first order": 313.0, "second order": 226.0}


class _ReplayER(LaMAML):
    """ER with the reservoir of the meta-learners: one SGD step (lr 0.1) on batch + replay."""

    def meta_update(self, x, y, task, bx, by, btasks) -> float:
        loss = self.loss(bx, by, btasks)
        self.sgd_step(loss, 0.1)
        return float(loss.detach())


CASES: dict[str, Callable[[torch.nn.Module, int], object]] = {
    "EMCL fused": lambda m, g: EMCL(m, 10, (784,), EMCLConfig(glances=g)),
    "EMCL reference": lambda m, g: EMCL(m, 10, (784,), EMCLConfig(glances=g, reference=True)),
    "EMCL fused, inner loop on the 10 incoming": lambda m, g: EMCL(m, 10, (784,),
                                                                    EMCLConfig(glances=g, inner_replay=False)),
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batches", type=int, default=40, help="timed incoming batches per run")
    p.add_argument("--warmup", type=int, default=25, help="untimed batches first (fills the memory)")
    p.add_argument("--glances", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)


def main(args: argparse.Namespace) -> int:
    run(args.batches, args.warmup, args.glances, args.threads, args.repeats)
    return 0
