"""Training-throughput benchmark of the continual learners (``fastcl bench learners``).

ER-Ring on the MLP 784-256-256-10, batch 10 from the stream + 10 replayed, on Permuted MNIST:
fastcl's learner (ring memory ops, fused list SGD) against a plain-PyTorch loop of the same
algorithm (a Python dict of per-(task, class) deques as the memory, ``random.sample`` (distinct
examples, as fastcl's default and the HAL authors' code draw them; ``random.choices`` with
``replacement=True``) + ``torch.stack`` to sample, ``loss.backward()`` and a per-tensor SGD update), and HAL's whole
training time (end-of-task anchor learning included, exact and first-order anchoring gradient)
against fastcl's ER-Ring. Times exclude evaluation. Everything runs in one process, one after
the other, with the thread count pinned.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from typing import Callable

import torch
import torch.nn.functional as F

from ..algorithms import HAL, ERConfig, ERRing, HALConfig
from ..data.streams import Stream, permuted_mnist
from ..models import MLP

__all__ = ["plain_er_ring", "time_learner", "run", "add_arguments", "main"]


def plain_er_ring(model: torch.nn.Module, stream: Stream, lr: float = 0.1, per_class: int = 1,
                  replay: int = 10, batch: int = 10, seed: int = 0, replacement: bool = False) -> float:
    """ER-Ring written the plain way; returns the training seconds."""
    rng = random.Random(seed)
    memory: dict[tuple[int, int], deque] = {}
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    begin = time.perf_counter()
    for task in stream:
        t = task.task_id
        for x, y in task.batches(batch, gen):
            past = [item for (tt, _), ring in memory.items() if tt < t for item in ring]
            if past:
                picked = rng.choices(past, k=replay) if replacement else rng.sample(past, min(replay, len(past)))
                x = torch.cat([x, torch.stack([p[0] for p in picked])])
                y = torch.cat([y, torch.tensor([p[1] for p in picked])])
            loss = F.cross_entropy(model(x), y)
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-lr)
            for xi, yi in zip(x[:batch], y[:batch].tolist()):
                memory.setdefault((t, yi), deque(maxlen=per_class)).append((xi.clone(), yi))
    return time.perf_counter() - begin


def time_learner(make: Callable[[], object], stream: Stream, batch: int = 10, seed: int = 0) -> float:
    """Training seconds of a fastcl learner over the stream (observe + end_task, no evaluation)."""
    learner = make()
    gen = torch.Generator().manual_seed(seed)
    begin = time.perf_counter()
    for task in stream:
        for x, y in task.batches(batch, gen):
            learner.observe(x, y, task.task_id)
        learner.end_task(task.task_id)
    return time.perf_counter() - begin


def run(tasks: int = 5, per_task: int = 1000, threads: int = 1, repeats: int = 3, log=print) -> dict:
    """Median training time of each learner over ``repeats`` runs; prints a markdown table."""
    torch.set_num_threads(threads)
    stream = permuted_mnist(num_tasks=tasks, per_task=per_task, seed=0)
    sizes = (784, 256, 256, 10)

    def model():
        torch.manual_seed(0)
        return MLP(sizes)

    cases = {
        "plain ER-Ring loop": lambda: plain_er_ring(model(), stream),
        "fastcl ER-Ring": lambda: time_learner(lambda: ERRing(model(), 10, (784,), ERConfig(num_tasks=tasks)), stream),
        "plain ER-Ring loop, replay with replacement": lambda: plain_er_ring(model(), stream, replacement=True),
        "fastcl ER-Ring, replay with replacement": lambda: time_learner(
            lambda: ERRing(model(), 10, (784,), ERConfig(num_tasks=tasks, replay_replacement=True)), stream),
        "fastcl HAL (first order)": lambda: time_learner(
            lambda: HAL(model(), 10, (784,), HALConfig(num_tasks=tasks, first_order=True)), stream),
        "fastcl HAL (exact)": lambda: time_learner(lambda: HAL(model(), 10, (784,), HALConfig(num_tasks=tasks)), stream),
    }
    times = {name: [] for name in cases}
    for _ in range(repeats):  # interleaved, so load changes hit every case alike
        for name, fn in cases.items():
            times[name].append(fn())
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    steps = tasks * ((per_task + 9) // 10)
    er = med["fastcl ER-Ring"]
    lines = [f"Permuted MNIST, {tasks} tasks x {per_task}, MLP 784-256-256-10, batch 10 + 10 replayed, "
             f"{threads} thread(s), median of {repeats}", "",
             "| learner | train s | steps/s | stream examples/s | vs plain loop | vs fastcl ER-Ring |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, sec in med.items():
        lines.append(f"| {name} | {sec:.2f} | {steps / sec:,.0f} | {10 * steps / sec:,.0f} | "
                     f"{med['plain ER-Ring loop'] / sec:.2f}x | {sec / er:.2f}x time |")
    log("\n".join(lines))
    return {"seconds": med, "steps": steps, "threads": threads, "tasks": tasks, "per_task": per_task}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--per-task", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)


def main(args: argparse.Namespace) -> int:
    run(args.tasks, args.per_task, args.threads, args.repeats)
    return 0
