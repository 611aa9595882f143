"""CTS speed: T task learners under vmap with the fused shift against T nn.Module copies.

    fastcl bench cts [--threads 1] [--tasks 8] [--steps 50] [--repeats 5]

Table 1 (end to end, one CTS step = one inner step of every task learner + the meta step + the
shift of every trajectory): an MLP 784-100-100-10 with batch 32 per task (compute-bound) and an
MLP 20-40-40-5 with batch 10 (overhead-bound), SGD with momentum 0.9, a shift every step.
  * ``fastcl``: :class:`fastcl.algorithms.CTS` (``vmap(grad)`` over the stacked learners, one
    foreach momentum update, one fused ``trajectory_shift_``);
  * ``modules``: T ``nn.Module`` copies, each with its own ``torch.optim.SGD`` (momentum, the
    default foreach implementation), forward/backward/step in a Python loop, then the meta step
    and the shift one tensor at a time in Python.
Both start from the same phi, see the same batches, and are checked equal before timing.

Table 2: ``trajectory_shift_`` alone (fused) against its reference
(:func:`fastcl.ops.reference.trajectory_shift_`) on the reduced ResNet-18 parameter list, T in
{2, 8, 32}. The median of ``--repeats`` timings; ratios from one run, threads pinned.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from .. import ops
from ..algorithms.cts import CTS, CTSConfig
from ..models import MLP
from ..ops import reference as ref
from .ops import resnet18_reduced_shapes

__all__ = ["run", "add_arguments", "main", "ModuleCopies"]

#: (MLP sizes, batch per task): an MNIST-sized MLP (compute-bound) and a small one (overhead-bound)
MODELS = (((784, 100, 100, 10), 32), ((20, 40, 40, 5), 10))
ALPHA, BETA, MU = 0.05, 0.1, 0.9


class ModuleCopies:
    """The plain-PyTorch CTS baseline: T model copies, T torch.optim.SGD, a per-tensor shift."""

    def __init__(self, model: torch.nn.Module, num_tasks: int):
        self.phi = [p.detach().clone() for p in model.parameters()]
        self.models = [copy.deepcopy(model) for _ in range(num_tasks)]
        self.opts = [torch.optim.SGD(m.parameters(), lr=ALPHA, momentum=MU) for m in self.models]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for t, (m, opt) in enumerate(zip(self.models, self.opts)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x[t]), y[t]).backward()
            opt.step()
        with torch.no_grad():
            params = [list(m.parameters()) for m in self.models]
            for i, phi in enumerate(self.phi):
                mean = sum(ps[i] for ps in params) / len(params)
                delta = BETA * (mean - phi)
                phi.add_(delta)
                for ps in params:
                    ps[i].add_(delta)


def _fastcl(model: torch.nn.Module, num_tasks: int) -> CTS:
    def loss(p, batch):
        return F.cross_entropy(torch.func.functional_call(model, p, (batch[0],), tie_weights=False), batch[1])

    return CTS(model, loss, num_tasks, CTSConfig(inner_lr=ALPHA, meta_lr=BETA, momentum=MU, inner_steps=10 ** 9),
               distributed=False)


def _time(fns: list[Callable[[], None]], steps: int, repeats: int) -> list[float]:
    """Median seconds per call of each fn; the repeats of the fns interleave, so machine noise
    hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            out[i].append((time.perf_counter() - t0) / steps)
    return [statistics.median(o) for o in out]


def end_to_end(num_tasks: int = 8, steps: int = 50, repeats: int = 5, seed: int = 0,
               sizes=MODELS[0][0], batch: int = MODELS[0][1]) -> dict:
    """Seconds per CTS step of both implementations (see the module docstring)."""
    torch.manual_seed(seed)
    model = MLP(tuple(sizes))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tasks, batch, sizes[0], generator=g)
    y = torch.randint(sizes[-1], (num_tasks, batch), generator=g)
    fast, slow = _fastcl(model, num_tasks), ModuleCopies(model, num_tasks)
    batch_fn = lambda m, k, tasks: (x, y)
    for _ in range(3):  # the two agree before anything is timed
        fast.step(batch_fn)
        slow.step(x, y)
    for i, n in enumerate(fast.names):
        torch.testing.assert_close(fast.theta[n], torch.stack([list(m.parameters())[i].detach() for m in slow.models]),
                                   rtol=1e-4, atol=1e-5)
    t_fast, t_slow = _time([lambda: fast.step(batch_fn), lambda: slow.step(x, y)], steps, repeats)
    return {"tasks": num_tasks, "mlp": "-".join(map(str, sizes)), "batch": batch, "fastcl_s": t_fast,
            "modules_s": t_slow, "speedup": t_slow / t_fast}


def shift_alone(tasks=(2, 8, 32), steps: int = 20, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Seconds per ``trajectory_shift_`` call, fused vs reference, on the reduced ResNet-18 list."""
    rows = []
    shapes = resnet18_reduced_shapes()
    for T in tasks:
        g = torch.Generator().manual_seed(seed)
        phi = [torch.randn(s, generator=g) for s in shapes]
        th = [torch.randn((T, *s), generator=g) for s in shapes]
        t_fused, t_ref = _time([lambda: ops.trajectory_shift_(phi, th, BETA, True),
                                lambda: ref.trajectory_shift_(phi, th, BETA, True)], steps, repeats)
        rows.append({"T": T, "fused_ms": 1e3 * t_fused, "reference_ms": 1e3 * t_ref, "speedup": t_ref / t_fused})
    return rows


def run(threads=(1,), num_tasks: int = 8, steps: int = 50, repeats: int = 5, log=print) -> dict:
    res = {"backend": ops.backend(), "end_to_end": [], "shift": []}
    for th in threads:
        torch.set_num_threads(th)
        for sizes, batch in MODELS:
            r = end_to_end(num_tasks, steps, repeats, sizes=sizes, batch=batch)
            r["threads"] = th
            res["end_to_end"].append(r)
        for row in shift_alone(steps=max(5, steps // 5), repeats=repeats):
            row["threads"] = th
            res["shift"].append(row)
    log(f"CTS step, T = {num_tasks} MLP learners, SGD momentum, shift every step (backend {res['backend']})\n")
    log("| threads | MLP | batch/task | fastcl (vmap + fused shift) ms | T nn.Module copies + torch.optim.SGD ms | speed-up |")
    log("|---|---|---|---|---|---|")
    for r in res["end_to_end"]:
        log(f"| {r['threads']} | {r['mlp']} | {r['batch']} | {1e3 * r['fastcl_s']:.2f} | {1e3 * r['modules_s']:.2f} "
            f"| {r['speedup']:.2f}x |")
    log("\ntrajectory_shift_ alone, reduced ResNet-18 parameter list\n")
    log("| threads | T | fused ms | reference ms | speed-up |")
    log("|---|---|---|---|---|")
    for r in res["shift"]:
        log(f"| {r['threads']} | {r['T']} | {r['fused_ms']:.3f} | {r['reference_ms']:.3f} | {r['speedup']:.2f}x |")
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    p.add_argument("--tasks", type=int, default=8, help="T task learners (default 8)")
    p.add_argument("--steps", type=int, default=50, help="CTS steps per timing (default 50)")
    p.add_argument("--repeats", type=int, default=5, help="timings; the median is reported (default 5)")
    p.add_argument("--json", default=None, help="also write the measurements to this JSON file")


def main(args: argparse.Namespace) -> int:
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    res = run(threads, args.tasks, args.steps, args.repeats)
    if args.json:
        from fastcl.rundir import atomic_write_json

        atomic_write_json(args.json, res)
    return 0
