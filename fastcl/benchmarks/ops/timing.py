"""Timing: several callables interleaved, so a change of machine load hits all of them alike."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch


from .cases import FLOAT, ITEM


# ============================================================================ timing
def time_fn(fn: Callable[[], Any], threads: int, min_run_time: float, warmup: int = 3,
            sync: Callable[[], None] = lambda: None) -> dict:
    """Median seconds per call of one ``fn`` at ``threads`` threads (see :func:`time_interleaved`)."""
    return time_interleaved({"fn": fn}, threads, min_run_time, warmup, sync=sync)["fn"]


def time_interleaved(fns: dict[str, Callable[[], Any]], threads: int, min_run_time: float, warmup: int = 3,
                     min_rounds: int = 5, max_rounds: int = 400, max_time: Optional[float] = None,
                     sync: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """Times several callables *interleaved*, so that a change of machine load hits all of them.

    Each callable is warmed up (``warmup`` calls; the fastest of them estimates its cost), then
    given a block size of ``n`` calls lasting about ``min_run_time / 20``. Rounds then time one
    block of every callable (the order rotates from round to round) until every callable has
    run for ``min_run_time`` seconds in at least ``min_rounds`` rounds. The result per callable:
    ``median_s`` (median over the blocks of seconds per call), ``iqr_s``, ``min_s``, ``runs``
    (blocks), ``per_run`` (calls per block) and ``capped`` (True when the rounds stopped at
    ``max_time``, default ``3 * min_run_time * len(fns)`` seconds, after at least 3 rounds: a
    machine so busy that calls stall; the figures are then rough); or ``error`` if a call raised.
    ``sync`` is called before a clock is read (``torch.cuda.synchronize`` for CUDA work, so that a
    block's time covers its kernels, not only their launches).
    """
    if max_time is None:
        max_time = 3.0 * min_run_time * max(1, len(fns))
    torch.set_num_threads(threads)
    clock = time.perf_counter
    block_s = max(min_run_time / 20, 1e-5)
    number, samples, total, out = {}, {}, {}, {}
    for name, fn in fns.items():
        best = math.inf
        try:
            for _ in range(max(1, warmup)):
                sync()
                t0 = clock()
                fn()
                sync()
                best = min(best, clock() - t0)
        except Exception as err:  # noqa: BLE001
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        number[name] = max(1, int(block_s / max(best, 1e-9)))
        samples[name], total[name] = [], 0.0
    names = list(number)
    rounds, start, capped = 0, clock(), False
    while names and rounds < max_rounds and (rounds < min_rounds or min(total[k] for k in names) < min_run_time):
        if rounds >= 3 and clock() - start > max_time:
            capped = True
            break
        order = names[rounds % len(names):] + names[: rounds % len(names)]
        for name in order:
            fn, n = fns[name], number[name]
            try:
                sync()
                t0 = clock()
                for _ in range(n):
                    fn()
                sync()
                dt = clock() - t0
            except Exception as err:  # noqa: BLE001
                out[name] = {"error": f"{type(err).__name__}: {err}"}
                names.remove(name)
                continue
            samples[name].append(dt / n)
            total[name] += dt
        rounds += 1
    for name in number:
        if name in out:
            continue
        xs = torch.tensor(samples[name], dtype=torch.float64)
        q = torch.quantile(xs, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        out[name] = {"median_s": q[1], "iqr_s": q[2] - q[0],
                     "min_s": float(xs.min()), "runs": len(xs), "per_run": number[name], "capped": capped}
    return out


def copy_callable(footprint_bytes: int, device: str | torch.device = "cpu") -> tuple[Callable[[], Any], int]:
    """``dst.copy_(src)`` with src + dst = ``footprint_bytes`` on ``device``, and the bytes it moves."""
    n = max(1, footprint_bytes // (2 * ITEM))
    src, dst = torch.randn(n, dtype=FLOAT, device=device), torch.empty(n, dtype=FLOAT, device=device)
    return (lambda: dst.copy_(src)), 2 * n * ITEM
