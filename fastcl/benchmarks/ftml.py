"""Meta-update time of FTML: ``fastcl bench ftml [--threads 1] [--repeats 5] [--tasks 1,4,16]``.

One FTML meta-gradient (Eq. 5: ``S`` inner SGD steps of size 0.1 on ``D^tr``, the loss on ``D^val``
and its gradient with respect to the initial weights) on Rainbow-MNIST-sized inputs
(``[3, 28, 28]``, :class:`fastcl.models.ConvNet`, 10 examples in each minibatch), for ``K`` tasks
per meta-update, second and first order:

* ``fastcl``: :meth:`fastcl.algorithms.FTML.meta_gradient`, ``torch.func`` (``grad`` of a function
  that runs ``grad`` inside) with the K tasks under ``vmap``;
* ``loop``: the plain-autograd way (as learn2learn / higher run MAML): per task, ``S`` calls of
  ``torch.autograd.grad(..., create_graph=True)`` on ``functional_call``, then one
  ``backward()`` of the summed validation losses.

Both give the same gradient (checked before timing). Times are the median of ``--repeats`` runs
after a warm-up, in one process, with the thread count pinned; they are the process's CPU time
(``time.process_time``), which on one thread equals the wall time of an idle machine and is far
less disturbed than the wall clock when other jobs share the cores. The table prints
milliseconds and the loop / fastcl ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..algorithms.ftml import FTML, FTMLConfig
from ..models import ConvNet

__all__ = ["loop_meta_gradient", "run", "table", "add_arguments", "main_from_args", "main"]

SHAPE = (3, 28, 28)


def loop_meta_gradient(model: torch.nn.Module, x_tr, y_tr, x_val, y_val, *, lr: float = 0.1, steps: int = 5,
                       first_order: bool = False, label_smoothing: float = 0.1) -> dict[str, torch.Tensor]:
    """The meta-gradient of ``K`` tasks (``x_tr`` ``[K, B, ...]``) with a per-task Python loop of autograd."""
    names = [k for k, _ in model.named_parameters()]
    params = list(model.parameters())
    total = 0.0
    for k in range(x_tr.shape[0]):
        w = params
        for _ in range(steps):
            out = functional_call(model, dict(zip(names, w)), (x_tr[k],))
            loss = F.cross_entropy(out, y_tr[k], label_smoothing=label_smoothing)
            grads = torch.autograd.grad(loss, w, create_graph=not first_order)
            w = [p - lr * g for p, g in zip(w, grads)]
        out = functional_call(model, dict(zip(names, w)), (x_val[k],))
        total = total + F.cross_entropy(out, y_val[k], label_smoothing=label_smoothing)
    model.zero_grad(set_to_none=True)
    (total / x_tr.shape[0]).backward()
    return {k: p.grad for k, p in model.named_parameters()}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1000 * statistics.median(times)


def run(tasks=(1, 4, 16), steps=(1, 5), repeats: int = 5, batch: int = 10) -> list[dict]:
    """Rows of the table (one per K, S, order), with the thread count already pinned by the caller."""
    rows = []
    for first_order in (False, True):
        for s in steps:
            for k in tasks:
                torch.manual_seed(0)
                model = ConvNet()
                learner = FTML(model, SHAPE, FTMLConfig(inner_steps=s, first_order=first_order, meta_batch=k))
                x_tr, x_val = torch.rand(k, batch, *SHAPE), torch.rand(k, batch, *SHAPE)
                y_tr, y_val = torch.randint(0, 10, (k, batch)), torch.randint(0, 10, (k, batch))
                g, _ = learner.meta_gradient(x_tr, y_tr, x_val, y_val)
                ref = loop_meta_gradient(model, x_tr, y_tr, x_val, y_val, steps=s, first_order=first_order)
                for name in g:
                    torch.testing.assert_close(g[name], ref[name], rtol=1e-3, atol=1e-5)
                fast = _median_ms(lambda: learner.meta_gradient(x_tr, y_tr, x_val, y_val), repeats)
                loop = _median_ms(lambda: loop_meta_gradient(model, x_tr, y_tr, x_val, y_val, steps=s,
                                                             first_order=first_order), repeats)
                rows.append({"order": "first" if first_order else "second", "tasks": k, "inner_steps": s,
                             "fastcl_ms": fast, "loop_ms": loop, "ratio": loop / fast})
    return rows


def table(rows: list[dict], threads: int) -> str:
    lines = [f"FTML meta-gradient, ConvNet on [3, 28, 28], 10 + 10 examples per task, {threads} thread(s)", "",
             "| order | K tasks | inner steps | fastcl (ms) | per-task loop (ms) | loop / fastcl |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['order']} | {r['tasks']} | {r['inner_steps']} | {r['fastcl_ms']:.1f} | "
                     f"{r['loop_ms']:.1f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tasks", default="1,4,16", help="K values, comma-separated")
    p.add_argument("--steps", default="1,5", help="inner-step counts, comma-separated")


def main_from_args(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    rows = run(tuple(int(v) for v in args.tasks.split(",")), tuple(int(v) for v in args.steps.split(",")),
               args.repeats)
    print(table(rows, args.threads))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return main_from_args(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
