"""Prints the benchmark tables of docs/benchmarks.md: every fused op against its eager chain, per-tensor
loop, torch._foreach and torch.compile forms, at 1 and 2 threads, in one run.

    python bench/table.py                 # full run (1e7 cases, T=32, torch.compile): minutes
    python bench/table.py --quick         # the subset of `make run`
    python bench/table.py --json out.json # also every measurement as JSON

It is ``fastcl bench ops --markdown`` (see fastcl.benchmarks.ops for the columns and bytes);
extra arguments are passed through.
"""

import sys

from fastcl.benchmarks.ops import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args if "--markdown" in args else ["--markdown", *args]))
