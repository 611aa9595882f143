"""``fastcl bench ops`` / ``python -m fastcl.benchmarks.ops``: arguments and entry point."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


from .validation import OPS
from .runner import run
from .tables import format_tables


# ============================================================================ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a subset that runs in about a minute: no 1e7 / T=32 cases, no torch.compile, short timing")
    p.add_argument("--sizes", choices=("full", "quick", "tiny"), default=None,
                   help="case sizes (default: quick with --quick, else full; tiny is for tests)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts, all measured in one run (1,2)")
    p.add_argument("--ops", default=None, help=f"comma-separated subset of: {', '.join(OPS)}")
    p.add_argument("--cases", default=None, help="comma-separated subset of case names (1e6, resnet18, ...)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="include the torch.compile impls (default unless --quick)")
    g.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile impls")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed calls per row (default 0.5; 0.1 with --quick; 0.005 with tiny sizes)")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every measurement as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress indication on stderr")
    p.add_argument("--device", default="cpu",
                   help="where the ops run: cpu (default) or cuda[:N] (needs fastcl built with its CUDA kernels)")


def run_from_args(args: argparse.Namespace) -> int:
    sizes = args.sizes or ("quick" if args.quick else "full")
    compile_ = (not args.quick and sizes != "tiny") if args.compile is None else args.compile
    min_time = args.min_time
    if min_time is None:
        min_time = 0.005 if sizes == "tiny" else (0.1 if args.quick else 0.5)
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        print(f"--threads must be comma-separated integers, got {args.threads!r}", file=sys.stderr)
        return 2
    if not threads or min(threads) < 1:
        print("--threads needs at least one count >= 1", file=sys.stderr)
        return 2
    ops = args.ops.split(",") if args.ops else None
    cases = args.cases.split(",") if args.cases else None
    try:
        res = run(ops=ops, sizes=sizes, threads=threads, compile=compile_, min_run_time=min_time, cases=cases,
                  progress=not args.no_progress, device=args.device)
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(format_tables(res, markdown=args.markdown))
    if args.json:
        from fastcl.rundir import atomic_write_json

        atomic_write_json(args.json, res.to_json())
    wrong = [r for r in res.rows if r.get("error", "").startswith("WRONG")]
    return 1 if wrong else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastcl.benchmarks.ops", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
