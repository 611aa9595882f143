"""The tables the benchmark prints (text or markdown)."""

from __future__ import annotations

from .validation import OPS
from .runner import Results


# ============================================================================ tables
def _index(rows):
    return {(r["op"], r["case"], r["threads"], r["impl"]): r for r in rows}


def _fmt_us(r) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "WRONG" if r["error"].startswith("WRONG") else "n/a"
    us = r["us"]
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def _speedup(other, fused) -> str:
    if other is None or fused is None or "us" not in other or "us" not in fused:
        return "-"
    return f"{other['us'] / fused['us']:.2f}x"


def _groups(res: Results, kind: str):
    """``(row, get)`` once per (op, case, threads) of the ops of ``kind``, in the order measured;
    ``get(impl)`` is that group's row of ``impl`` (or None)."""
    idx = _index(res.rows)
    seen = set()
    for r in res.rows:
        key = (r["op"], r["case"], r["threads"])
        if OPS[r["op"]].kind != kind or key in seen:
            continue
        seen.add(key)
        yield r, (lambda impl, key=key: idx.get(key + (impl,)))


def update_table(res: Results) -> tuple[list[str], list[list[str]]]:
    header = ["op", "case", "thr", "fused us", "GB/s", "% copy_", "copy_ GB/s", "chain us", "loop us", "foreach us",
              "compile us", "compile(foreach) us", "vs chain", "vs loop", "vs foreach", "vs compile",
              "vs compile(foreach)"]
    body = []
    for r, get in _groups(res, "update"):
        f = get("fused")
        ok = f is not None and "us" in f
        body.append([
            r["op"], r["case"], str(r["threads"]), _fmt_us(f),
            f"{f['gbps']:.1f}" if ok else "-", f"{f['pct_copy']:.0f}%" if ok and "pct_copy" in f else "-",
            f"{get('copy_')['gbps']:.1f}" if get("copy_") and "gbps" in get("copy_") else "-",
            _fmt_us(get("chain")), _fmt_us(get("loop")), _fmt_us(get("foreach")), _fmt_us(get("compile")),
            _fmt_us(get("compile_foreach")),
            _speedup(get("chain"), f), _speedup(get("loop"), f), _speedup(get("foreach"), f),
            _speedup(get("compile"), f), _speedup(get("compile_foreach"), f),
        ])
    return header, body


def memory_table(res: Results) -> tuple[list[str], list[list[str]]]:
    header = ["op", "case", "thr", "fused us", "loop us", "reference us", "randint+index_select us",
              "vs loop", "vs reference", "vs randint"]
    body = []
    for r, get in _groups(res, "memory"):
        f = get("fused")
        body.append([r["op"], r["case"], str(r["threads"]), _fmt_us(f), _fmt_us(get("loop")),
                     _fmt_us(get("reference")), _fmt_us(get("randint")), _speedup(get("loop"), f),
                     _speedup(get("reference"), f), _speedup(get("randint"), f)])
    return header, body


def _render(header, body, markdown: bool) -> str:
    if not body:
        return ""
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in body])


def format_tables(res: Results, markdown: bool = False) -> str:
    """The update-op table and the memory-op table, with the run's facts and notes."""
    m = res.meta
    out = [f"fastcl {m['fastcl']}, torch {m['torch']}, backend {m['backend']}, cpu ISA {m['cpu_isa']}, "
           f"device {m.get('device', 'cpu')}, sizes {m['sizes']}, threads {','.join(map(str, m['threads']))}, min run time {m['min_run_time_s']} s"]
    out.append("times: median microseconds per call; 'vs X' = time of X / time of fused (higher: fused faster); "
                "GB/s and % copy_ of the fused op (bytes: see fastcl.benchmarks.ops)")
    u = _render(*update_table(res), markdown)
    if u:
        out += ["", u]
    mt = _render(*memory_table(res), markdown)
    if mt:
        out += ["", mt]
    if res.notes:
        out += [""] + [("- " if markdown else "note: ") + n for n in res.notes]
    return "\n".join(out)
