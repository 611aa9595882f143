"""The ``fastcl`` command.

    fastcl info                  version, backend, vector ISA, threads, CUDA kernels built
    fastcl bench ops [--quick] [--threads 1,2] [--markdown] [--json PATH]
                                 the fused-op benchmark tables (fastcl.benchmarks.ops): fused vs
                                 eager chain, per-tensor loop, torch._foreach, torch.compile;
                                 progress on stderr, tables on stdout
"""

from __future__ import annotations

import argparse
import sys

import torch


def _info(args: argparse.Namespace) -> int:
    import fastcl
    from fastcl import ops

    rows = [
        ("fastcl", fastcl.__version__),
        ("torch", torch.__version__),
        ("backend", ops.backend()),
        ("cpu vector ISA", ops.cpu_isa()),
        ("threads", str(torch.get_num_threads())),
        ("CUDA kernels built", "yes" if ops.cuda_built() else "no"),
        ("CUDA available", "yes" if torch.cuda.is_available() else "no"),
    ]
    if ops.load_error() is not None:
        rows.append(("extension error", str(ops.load_error())))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _bench_ops(args: argparse.Namespace) -> int:
    from fastcl.benchmarks import ops as bench_ops

    return bench_ops.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print version, backend, ISA, threads, CUDA build")
    p.set_defaults(func=_info)

    from fastcl.benchmarks import ops as bench_ops

    p = sub.add_parser("bench", help="run a benchmark (ops: the fused-op tables)")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    q = bench_sub.add_parser("ops", help="fused ops vs eager chain / loop / foreach / torch.compile",
                             description=bench_ops.__doc__.split("\n\n")[0])
    bench_ops.add_arguments(q)
    q.set_defaults(func=_bench_ops)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
