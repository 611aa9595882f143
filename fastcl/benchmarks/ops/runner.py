"""The runner: validate, then time, every (op, case, impl) of the plan at every thread count."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

import fastcl
from fastcl import ops as fops

from .cases import Case, ITEM, Op, bytes_moved, footprint
from .validation import OPS, cases_for, check_device, clone_state, expected_state, state_to, validate
from .timing import copy_callable, time_interleaved


# ============================================================================ runner
def fused_available(op: Op, device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``fused`` runs a compiled kernel on ``device`` (not the reference fallback or nothing)."""
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    if fops.backend() == "reference":
        return False, "extension not loaded: fused == reference fallback"
    names = {"ring_insert+sample": ("ring_insert_", "ring_sample"), "ring_sample": ("ring_sample",),
             "reservoir_insert_": ("reservoir_insert_",)}.get(op.name, (op.name,))
    for n in names:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcl::{n}", key):
            return False, f"no {key} kernel registered for fastcl::{n}"
    return True, ""


def plan(ops: Optional[Sequence[str]] = None, sizes: str = "full", compile: bool = True,
         cases: Optional[Sequence[str]] = None, device: str | torch.device = "cpu") -> list[tuple[Op, Case, list[str]]]:
    """The (op, case, impls) groups a run measures on ``device``."""
    on_cpu = torch.device(device).type == "cpu"
    names = list(ops) if ops else list(OPS)
    for n in names:
        if n not in OPS:
            raise ValueError(f"unknown op {n!r}; expected one of {sorted(OPS)}")
    out = []
    for n in names:
        op = OPS[n]
        impls = [i for i in op.impls if (compile or not i.startswith("compile")) and (on_cpu or i not in op.cpu_only)]
        for case in cases_for(op, sizes):
            if cases and case.name not in cases and case.name.split(" ")[0] not in cases:
                continue
            out.append((op, case, impls))
    return out


@dataclass
class Results:
    meta: dict
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"meta": self.meta, "notes": self.notes, "rows": self.rows}


def run(ops: Optional[Sequence[str]] = None, sizes: str = "full", threads: Sequence[int] = (1, 2),
        compile: bool = True, min_run_time: float = 0.5, cases: Optional[Sequence[str]] = None,
        progress: bool = True, seed: int = 0, device: str | torch.device = "cpu") -> Results:
    """Validates, then times, every (op, case, impl) of the plan at every thread count.

    ``device`` is ``"cpu"`` or a CUDA device (:func:`check_device`): the inputs are made on the
    CPU, moved there, and the clock is read after ``torch.cuda.synchronize``; on CUDA the thread
    count only sets the host side and one count is measured.

    For each (op, case, threads) every impl gets its own copy of the inputs, is called once and
    compared with the reference (:func:`validate`), then all impls that passed (and ``copy_`` at
    the op's footprint) are timed interleaved (:func:`time_interleaved`). Rows hold, per
    (op, case, threads, impl): ``us`` (median microseconds per call), ``gbps`` (bytes moved /
    time), ``copy_gbps`` and ``pct_copy``; or ``error`` when the impl could not run here or
    computed something else than the reference (``WRONG: ...``: not timed).
    """
    dev = check_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        threads = list(threads)[:1]
    groups = plan(ops, sizes, compile, cases, dev)
    total = sum(len(impls) + 1 for _, _, impls in groups) * len(threads)
    saved_threads = torch.get_num_threads()
    res = Results(meta={
        "fastcl": fastcl.__version__, "torch": torch.__version__, "backend": fops.backend(),
        "cpu_isa": fops.cpu_isa(), "machine": platform.machine(), "processor": platform.processor(),
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "sizes": sizes, "threads": list(threads), "compile": compile, "min_run_time_s": min_run_time,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timer": "interleaved blocks, median seconds per call (fastcl.benchmarks.ops.time_interleaved)",
    })
    if sizes != "full":
        res.notes.append(f"sizes={sizes}: " + ("1e7 and T=32 skipped" if sizes == "quick" else "test sizes"))
    if not compile:
        res.notes.append("torch.compile impls skipped (--quick or --no-compile)")
    if fops.backend() == "reference":
        res.notes.append("the extension is not loaded: every 'fused' row is the reference fallback")
    if dev.type == "cuda":
        res.notes.append(f"device {dev} ({res.meta['device_name']}): times after torch.cuda.synchronize; "
                         "threads are the host's only")
    bar = _progress(total, progress)
    unavailable: dict[str, str] = {}
    try:
        for op, case, impls in groups:
            ok, why = fused_available(op, dev)
            if not ok:
                unavailable[op.name] = why
            base = state_to(op.make(case, seed), dev)
            expected = expected_state(op, base)
            nbytes, fbytes = bytes_moved(op, case), footprint(op, case)
            for t in threads:
                torch.set_num_threads(t)
                torch._dynamo.reset()
                rows, fns = {}, {}
                for impl in impls:
                    bar.set(f"{op.name} {case.name} t={t} {impl}: validate" + (" + compile" if impl.startswith("compile") else ""))
                    row = {"op": op.name, "case": case.name, "threads": t, "impl": impl, "bytes": nbytes,
                           "footprint": fbytes, "numel": case.numel, "tensors": case.ntensors}
                    try:
                        state = clone_state(base)
                        t0 = time.perf_counter()
                        fn = op.impls[impl](state)
                        validate(op, impl, state, fn, expected)
                        row["first_call_s"] = time.perf_counter() - t0
                        fns[impl] = fn
                    except AssertionError as err:
                        row["error"] = "WRONG: " + str(err).splitlines()[0][:300]
                    except Exception as err:  # noqa: BLE001  an impl that cannot run here
                        row["error"] = f"{type(err).__name__}: " + (str(err).splitlines() or [""])[0][:300]
                    rows[impl] = row
                    bar.step()
                copy_bytes = None
                if op.kind == "update" and fns:
                    fns["copy_"], copy_bytes = copy_callable(fbytes, dev)
                    rows["copy_"] = {"op": op.name, "case": case.name, "threads": t, "impl": "copy_",
                                     "bytes": copy_bytes, "footprint": fbytes, "numel": copy_bytes // (2 * ITEM),
                                     "tensors": 2}
                bar.set(f"{op.name} {case.name} t={t}: timing {len(fns)} impls interleaved")
                timings = time_interleaved(fns, t, min_run_time, sync=sync)
                for impl, m in timings.items():
                    row = rows[impl]
                    if "error" in m:
                        row["error"] = m["error"].splitlines()[0][:300]
                        continue
                    row.update(us=m["median_s"] * 1e6, iqr_us=m["iqr_s"] * 1e6, min_us=m["min_s"] * 1e6,
                               runs=m["runs"], per_run=m["per_run"], capped=m["capped"],
                               gbps=row["bytes"] / m["median_s"] / 1e9)
                copy_gbps = rows.get("copy_", {}).get("gbps")
                for impl, row in rows.items():
                    if copy_gbps and "gbps" in row:
                        row.update(copy_gbps=copy_gbps, pct_copy=100.0 * row["gbps"] / copy_gbps)
                    res.rows.append(row)
                bar.step()
                del fns, rows
    finally:
        bar.close()
        torch.set_num_threads(saved_threads)
        torch._dynamo.reset()
    for name, why in unavailable.items():
        res.notes.append(f"{name}: {why}")
    capped = sorted({f"{r['op']} {r['case']} t={r['threads']}" for r in res.rows if r.get("capped")})
    if capped:
        res.notes.append("timing stopped at its time cap (calls stalling: a busy machine; rough figures): "
                         + ", ".join(capped))
    for row in res.rows:
        if "error" not in row:
            continue
        if row["impl"] == "fused" and row["op"] in unavailable and not row["error"].startswith("WRONG"):
            continue  # said once above
        res.notes.append(f"{row['op']} {row['case']} t={row['threads']} {row['impl']}: {row['error'][:200]}")
    return res


class _progress:
    """A one-line progress indication on stderr (tqdm when available)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.n, self.total = 0, total
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="row", dynamic_ncols=True, leave=False)
            except ImportError:  # pragma: no cover
                self.bar = None

    def set(self, what: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(what)
        else:  # pragma: no cover
            print(f"[{self.n + 1}/{self.total}] {what}", file=sys.stderr, flush=True)

    def step(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
