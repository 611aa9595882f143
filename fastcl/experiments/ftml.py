"""Online meta-learning on Rainbow MNIST: FTML vs TOE / FTL / from scratch (``fastcl run ftml ...``).

The protocol of FTML (Finn et al., 2019, Alg. 1 and Sec. 6.1): the tasks of
:class:`fastcl.data.RainbowMNIST` arrive one after the other; the ``N`` training examples of a task
arrive in batches, so that ``|D_t|`` runs through the arrival grid (default 10, 20, 50, 100, 200,
500, 900). After each arrival the learner trains (``observe``), is adapted on all of ``D_t``
(``adapt``, the Update-Procedure) and is tested on the task's held-out data. Per task this
records the learning curve (accuracy against ``|D_t|``), the learning efficiency (the first
``|D_t|`` of the grid reaching the proficiency threshold, 90% accuracy; unreached tasks count as
``N`` in the plots and are counted apart in the table), the accuracy after 100 datapoints and
after all ``N`` (Fig. 3: left, centre and right).

Outputs in ``--out``: ``results.json`` (every curve), ``results.csv`` (one row per learner, seed
and task), ``efficiency.png`` (Fig. 3's three panels, mean and standard error over seeds) and a
markdown summary on stdout. A checkpoint after every task makes ``--resume`` continue exactly
(refused if its fingerprint, :mod:`fastcl.rundir`, is not the resuming run's). One bar over
learners x seeds x tasks shows the whole run's progress and ETA on stderr; a run of all 56 tasks
(no ``--tasks``) is at the paper's scale, about 2 h per FTML seed here, and says so first.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import rundir
from .progress import done_counter, overall_bar
from .progress import paper_scale_notice as paper_scale_notice_line
from ..algorithms.ftml import ONLINE_LEARNERS, FTMLConfig, OnlineLearner
from ..data.rainbow import RainbowMNIST
from ..finite import FiniteGuard
from ..metrics import learning_efficiency
from ..models import ConvNet

__all__ = ["NAMES", "STREAM", "DEFAULT_ARRIVALS", "run_online", "run_online_learner", "add_run_arguments",
           "run_from_args", "paper_scale_notice"]

#: Learners of this family (``fastcl run ftml,toe,ftl,scratch``).
NAMES: tuple[str, ...] = tuple(ONLINE_LEARNERS)
#: The only stream of this family.
STREAM = "rainbow-mnist"
#: Sizes of D_t after each arrival (the last is clipped to / completed with per_task).
DEFAULT_ARRIVALS: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 900)


def arrival_grid(arrivals: Sequence[int], per_task: int) -> list[int]:
    """The sizes of ``D_t`` after each arrival: ``arrivals`` below ``per_task``, then ``per_task``."""
    grid = sorted({int(a) for a in arrivals if 0 < int(a) < per_task}) + [per_task]
    if any(int(a) <= 0 for a in arrivals):
        raise ValueError(f"arrivals must be > 0, got {list(arrivals)}")
    return grid


@torch.no_grad()
def _accuracy(learner: OnlineLearner, x: torch.Tensor, y: torch.Tensor, task: int, batch: int = 1000) -> float:
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((learner.predict(x[i : i + batch], task).argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, x.shape[0])


def checkpoint_fingerprint(learner: OnlineLearner, stream, arrivals: Sequence[int], threshold: float, seed: int,
                           extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The fingerprint :func:`run_online_learner` stores in its checkpoints (and checks on resume).

    Args:
        learner: the learner (its class and config count).
        stream: the tasks (their number counts).
        arrivals, threshold, seed: as for :func:`run_online_learner`.
        extra: more fields that define the run.
    """
    return {**rundir.learner_fields(learner), "tasks": len(stream), "arrivals": list(arrivals),
            "threshold": threshold, "seed": seed, **(extra or {})}


def run_online_learner(learner: OnlineLearner, stream: RainbowMNIST, *, arrivals: Sequence[int] = DEFAULT_ARRIVALS,
                       threshold: float = 0.9, seed: int = 0, checkpoint: Optional[str | os.PathLike] = None,
                       resume: bool = False, progress: bool = True, stop_after: Optional[int] = None,
                       desc: str = "", fingerprint: Optional[dict[str, Any]] = None,
                       log: Optional[Callable[[str], None]] = None, check_finite: bool = True,
                       on_task_end: Optional[Callable[[int], None]] = None) -> list[dict[str, Any]]:
    """Run one learner over the task sequence (Alg. 1); one record per task.

    Args:
        learner: an :class:`~fastcl.algorithms.ftml.OnlineLearner`.
        stream: the tasks (anything with ``len`` and ``task(k)``).
        arrivals: sizes of ``D_t`` after each arrival (see :func:`arrival_grid`).
        threshold: proficiency threshold gamma on test accuracy.
        seed: seed of the order in which a task's examples arrive.
        checkpoint: file written after every task (checksummed, with the run's fingerprint: learner
            class and config, number of tasks, arrivals, threshold, seed, and ``fingerprint``);
            ``resume`` continues from it, or raises :class:`~fastcl.rundir.RunDirError` if it is
            damaged or of another run.
        stop_after: stop after this many tasks (tests simulate an interruption with it).
        fingerprint: more fields that define the run (data digest, test images...).
        log: told "resuming from task k/T" when a checkpoint is resumed.
        check_finite: stop (:class:`~fastcl.finite.NonFiniteError`, naming the task and arrival) on a
            NaN / inf input batch or weights; checked once per task, before the checkpoint.
        on_task_end: called with the number of tasks done after each task (and once at the start
            with those a resumed checkpoint holds).

    Returns:
        Per task: ``task``, ``info``, ``datapoints`` (the grid), ``accuracy`` (one per arrival),
        ``efficiency`` (nan if unreached), ``train_seconds`` (observe time) and ``eval_seconds``
        (Update-Procedure + test).
    """
    records: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(seed)
    start = 0
    fingerprint = checkpoint_fingerprint(learner, stream, arrivals, threshold, seed, fingerprint)
    guard = FiniteGuard(f"{desc or 'learner'}: task {{}}, arrival {{}}", enabled=check_finite)
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        state = rundir.load_checkpoint(checkpoint, fingerprint)
        learner.load_state_dict(state["learner"])
        gen.set_state(state["generator"])
        records = list(state["records"])
        start = len(records)
        if log is not None:
            log(rundir.resume_message(start, len(stream), checkpoint))
    if on_task_end is not None and start:
        on_task_end(start)
    bar = tqdm(range(start, len(stream)), disable=not progress, desc=desc, unit="task", leave=False)
    for k in bar:
        if stop_after is not None and k >= stop_after:
            break
        task = stream.task(k)
        n = task.x_train.shape[0]
        grid = arrival_grid(arrivals, n)
        order = torch.randperm(n, generator=gen)
        accs, train_s, eval_s, begin = [], 0.0, 0.0, 0
        for end in grid:
            idx = order[begin:end]
            t0 = time.perf_counter()
            learner.observe(task.x_train[idx], task.y_train[idx], k)
            guard.record(k, len(accs), input=task.x_train[idx], weights=list(learner.model.parameters()))
            t1 = time.perf_counter()
            accs.append(_accuracy(learner, task.x_test, task.y_test, k))
            train_s += t1 - t0
            eval_s += time.perf_counter() - t1
            begin = end
        guard.check()
        eff = learning_efficiency(grid, accs, threshold)
        records.append({"task": k, "info": task.info, "datapoints": grid, "accuracy": accs,
                        "efficiency": eff, "train_seconds": train_s, "eval_seconds": eval_s})
        bar.set_postfix(eff=("-" if eff != eff else int(eff)), acc=f"{accs[-1]:.2f}")
        if checkpoint is not None:
            rundir.save_checkpoint(checkpoint, {"learner": learner.state_dict(), "generator": gen.get_state(),
                                                "records": records}, fingerprint)
        if on_task_end is not None:
            on_task_end(k + 1)
    return records


def _at(record: dict[str, Any], size: int) -> float:
    """Accuracy at the last arrival with ``|D_t| <= size``."""
    acc = [a for d, a in zip(record["datapoints"], record["accuracy"]) if d <= size]
    return acc[-1] if acc else float("nan")


def _summary(records: list[dict[str, Any]], per_task: int) -> dict[str, float]:
    eff = np.array([r["efficiency"] for r in records], dtype=np.float64)
    capped = np.where(np.isnan(eff), per_task, eff)
    third = max(1, len(records) // 3)
    return {
        "efficiency": float(capped.mean()),
        "efficiency_first": float(capped[:third].mean()),
        "efficiency_last": float(capped[-third:].mean()),
        "unreached": float(np.isnan(eff).sum()),
        "accuracy_100": float(np.mean([_at(r, 100) for r in records])),
        "accuracy_final": float(np.mean([r["accuracy"][-1] for r in records])),
        "train_seconds": float(sum(r["train_seconds"] for r in records)),
        "eval_seconds": float(sum(r["eval_seconds"] for r in records)),
    }


@rundir.releases_run_dirs
def run_online(learners: Sequence[str], *, num_tasks: int = 56, per_task: int = 900,
               arrivals: Sequence[int] = DEFAULT_ARRIVALS, seeds: Sequence[int] = (0,),
               overrides: Sequence[str] = (), data: Optional[str] = None, test_per_task: Optional[int] = None,
               threshold: float = 0.9, out_dir: Optional[str | os.PathLike] = None, resume: bool = False,
               progress: bool = True, plots: bool = True,
               model_fn: Callable[[], torch.nn.Module] = ConvNet,
               log: Callable[[str], None] = print, overwrite: bool = False,
               check_finite: bool = True) -> dict[str, Any]:
    """Run ``learners`` x ``seeds`` on Rainbow MNIST; see the module docstring. Returns the results.

    ``out_dir``, ``resume``, ``overwrite``: as :func:`fastcl.rundir.open_run_dir`; ``check_finite``:
    stop on a NaN / inf input or weights (see :func:`run_online_learner`)."""
    from ..algorithms.overrides import parse_overrides

    unknown = [n for n in learners if n not in ONLINE_LEARNERS]
    if unknown or not learners:
        raise ValueError(f"unknown online learner(s) {unknown}; choose from {', '.join(ONLINE_LEARNERS)}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold (proficiency accuracy) must be in (0, 1], got {threshold}")
    cfg_overrides = parse_overrides(overrides, FTMLConfig)
    if isinstance(cfg_overrides.get("finetune_batch"), str):  # the one Optional[int] field
        v = cfg_overrides["finetune_batch"]
        try:
            cfg_overrides["finetune_batch"] = None if v.lower() == "none" else int(v)
        except ValueError:
            raise ValueError(f"finetune_batch expects an int or none, got {v!r}") from None
    FTMLConfig(**cfg_overrides)  # reject bad values before any training
    data_id = rundir.data_fields("mnist", data)
    out = rundir.open_run_dir(out_dir, learners=learners, what=STREAM, resume=resume, overwrite=overwrite)
    results: dict[str, Any] = {"stream": STREAM, "tasks": num_tasks, "per_task": per_task,
                               "arrivals": arrival_grid(arrivals, per_task), "threshold": threshold,
                               "seeds": list(seeds), "overrides": list(overrides), "data": data,
                               "test_per_task": test_per_task, "torch_threads": torch.get_num_threads(),
                               "learners": {}, **rundir.fingerprint(**data_id)}
    streams = {s: RainbowMNIST(num_tasks, per_task, seed=s, source=data, test_per_task=test_per_task) for s in seeds}

    def job(name: str, seed: int):
        """The learner, checkpoint fingerprint fields and checkpoint path of one (learner, seed) run."""
        torch.manual_seed(seed)
        config = FTMLConfig(**{**cfg_overrides, "seed": seed})
        learner = ONLINE_LEARNERS[name](model_fn(), RainbowMNIST.input_shape, config)
        fp = rundir.fingerprint(learner=name, per_task=per_task, test_per_task=test_per_task, **data_id)
        return learner, fp, out / f"checkpoint-{name}-seed{seed}.pt"

    for name, seed in [(n, s) for n in learners for s in seeds if resume]:  # damaged / foreign: refused first
        learner, fp, ck = job(name, seed)
        if ck.is_file():
            rundir.verify_checkpoint(ck, checkpoint_fingerprint(learner, streams[seed], arrivals, threshold, seed, fp))
    # one bar over every task of every (learner, seed), with its ETA, beside the run's own
    overall = overall_bar(len(learners) * len(seeds) * num_tasks, unit="task", progress=progress)
    tasks_done = done_counter(overall)  # a resumed run jumps over its done tasks

    try:
        for name in learners:
            runs = []
            for seed in seeds:
                learner, fp, ck = job(name, seed)
                config = learner.config
                overall.set_description(f"overall, {name} seed {seed}")
                begin = time.perf_counter()
                records = run_online_learner(learner, streams[seed], arrivals=arrivals, threshold=threshold,
                                             seed=seed, checkpoint=ck, resume=resume, progress=progress,
                                             desc=f"{name} seed {seed}", fingerprint=fp,
                                             log=lambda m: log(f"{name} seed {seed}: {m}"), check_finite=check_finite,
                                             on_task_end=lambda n: tasks_done(name, seed, n))
                runs.append({"seed": seed, "records": records, "summary": _summary(records, per_task),
                             "wall_seconds": time.perf_counter() - begin})
            keys = runs[0]["summary"]
            results["learners"][name] = {
                "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"},
                "runs": runs,
                "mean": {k: float(np.mean([r["summary"][k] for r in runs])) for k in keys},
                "std": {k: float(np.std([r["summary"][k] for r in runs])) for k in keys},
            }
    finally:
        overall.close()
    _write(results, out)
    log(summary_table(results))
    if plots:
        _plot(results, out)
    log(f"results written to {out}/results.json, results.csv" + (", efficiency.png" if plots else ""))
    return results


def summary_table(results: dict[str, Any]) -> str:
    """Markdown: efficiency (datapoints to 90%) over the first / last third of the tasks and all,
    accuracy after 100 and all datapoints, training time; mean (std) over seeds."""
    third = max(1, results["tasks"] // 3)
    lines = [f"{results['stream']}, {results['tasks']} tasks of {results['per_task']}, arrivals "
             f"{results['arrivals']}, threshold {results['threshold']:.0%}, seeds {results['seeds']}", "",
             f"| learner | datapoints to {results['threshold']:.0%}, first {third} tasks | last {third} tasks | "
             "all tasks | tasks unreached | acc. after 100 (%) | final acc. (%) | train s | eval s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(r, key, scale=1.0, digits=0):
        m, s = r["mean"][key] * scale, r["std"][key] * scale
        return f"{m:.{digits}f} ({s:.{digits}f})" if len(r["runs"]) > 1 else f"{m:.{digits}f}"

    for name, r in results["learners"].items():
        lines.append(f"| {name} | {f(r, 'efficiency_first')} | {f(r, 'efficiency_last')} | {f(r, 'efficiency')} | "
                     f"{f(r, 'unreached', digits=1)} | {f(r, 'accuracy_100', 100, 1)} | "
                     f"{f(r, 'accuracy_final', 100, 1)} | {f(r, 'train_seconds')} | {f(r, 'eval_seconds')} |")
    return "\n".join(lines)


def _write(results: dict[str, Any], out: Path) -> None:
    rundir.atomic_write_json(out / "results.json", results)
    rows = [["learner", "seed", "task", "colour", "scale", "rotation", "efficiency", "accuracy_100",
             "accuracy_final", "train_seconds", "eval_seconds"]]
    for name, r in results["learners"].items():
        for run in r["runs"]:
            for rec in run["records"]:
                i = rec["info"]
                rows.append([name, run["seed"], rec["task"], i["colour"], i["scale"], i["rotation"],
                             rec["efficiency"], _at(rec, 100), rec["accuracy"][-1], rec["train_seconds"],
                             rec["eval_seconds"]])
    rundir.atomic_write_csv(out / "results.csv", rows)


def _plot(results: dict[str, Any], out: Path) -> None:
    """Fig. 3 of the paper: efficiency, error after 100 datapoints, error after all, per task."""
    import matplotlib

    from .plots import task_ticks

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = results["per_task"]
    panels = [("datapoints to reach proficiency", lambda r: n if r["efficiency"] != r["efficiency"] else r["efficiency"]),
              ("error after 100 datapoints (%)", lambda r: 100 * (1 - _at(r, 100))),
              (f"error after all {n} datapoints (%)", lambda r: 100 * (1 - r["accuracy"][-1]))]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (label, fn) in zip(axes, panels):
        for name, r in results["learners"].items():
            v = np.array([[fn(rec) for rec in run["records"]] for run in r["runs"]], dtype=np.float64)
            x = np.arange(1, v.shape[1] + 1)
            mean = v.mean(0)
            ax.plot(x, mean, label=name, marker="o", markersize=3)
            if v.shape[0] > 1:
                se = v.std(0, ddof=1) / np.sqrt(v.shape[0])
                ax.fill_between(x, mean - se, mean + se, alpha=0.2)
        ax.set_xlabel("task")
        task_ticks(ax.xaxis)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"Rainbow MNIST, {results['tasks']} tasks (lower is better)")
    fig.tight_layout()
    rundir.atomic_savefig(fig, out / "efficiency.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ fastcl run
def add_run_arguments(group) -> None:
    """Options of this family on ``fastcl run`` (the shared ones map as documented in run_from_args)."""
    group.add_argument("--arrivals", default=None,
                       help="sizes of D_t after each arrival of data, comma-separated (default "
                            + ",".join(map(str, DEFAULT_ARRIVALS)) + "; the last is --per-task)")
    group.add_argument("--proficiency", type=float, default=0.9,
                       help="proficiency threshold gamma on test accuracy (default 0.9)")
    group.add_argument("--test-per-task", type=int, default=None,
                       help="held-out test images per task (default: the whole test pool)")


#: Smallest value of this family's integer options of ``fastcl run`` (checked before any run).
RUN_MINIMUMS = {"iterations": 0, "test_per_task": 1}  # FTMLConfig: meta_steps >= 0
#: The options of ``fastcl run`` shared with other families that this one reads (besides
#: --seeds, --out, ... which every family reads, and its own options above); see run_from_args.
RUN_OPTIONS = ("stream", "tasks", "per_task", "data", "shots", "inner_steps", "meta_batch", "iterations")
#: The paper's Rainbow MNIST: 56 tasks (7 colours x 2 scales x 4 rotations) of 900 examples.
PAPER_TASKS = 56
#: Minutes per task of one (learner, seed) run at the paper's settings on this 2-core machine (1
#: thread, two runs side by side): train + eval seconds of the 10-task runs of docs/ftml.md / 10.
MINUTES_PER_TASK = {"ftml": 0.47, "toe": 0.05, "ftl": 0.06, "scratch-adam": 0.06, "scratch": 0.02}


def paper_scale_notice(args, learners: Sequence[str]) -> Optional[str]:
    """The line ``fastcl run`` prints before a run of all 56 tasks (``--tasks`` not given), with
    its expected duration (scaled by ``--per-task`` / 900); ``None`` for a shorter run."""
    if args.tasks is not None:
        return None
    scale = (900 if args.per_task is None else args.per_task) / 900
    minutes = {n: PAPER_TASKS * scale * MINUTES_PER_TASK.get(n, MINUTES_PER_TASK["ftml"]) for n in learners}
    return paper_scale_notice_line(f"all {PAPER_TASKS} Rainbow MNIST tasks", minutes, learners, args.seeds,
                                   "--tasks N")


def _arrivals(args) -> Sequence[int]:
    """``--arrivals`` as positive ints (the default grid when not given)."""
    if args.arrivals is None:
        return DEFAULT_ARRIVALS
    try:
        arrivals = [int(a) for a in args.arrivals.split(",") if a.strip()]
    except ValueError:
        arrivals = [0]
    if not arrivals or min(arrivals) < 1:
        raise ValueError(f"--arrivals expects comma-separated ints >= 1, got {args.arrivals!r}")
    return arrivals


def check_run_args(args, learners: Sequence[str]) -> None:
    """The checks of ``fastcl run`` for this family's options that a minimum cannot express."""
    _arrivals(args)
    if not 0 < args.proficiency <= 1:
        raise ValueError(f"--proficiency (an accuracy) must be in (0, 1], got {args.proficiency}")


def run_from_args(args, learners: Sequence[str]) -> int:
    """``fastcl run ftml,toe,ftl,scratch --stream rainbow-mnist ...``.

    Shared options: --tasks (default 56), --per-task (N, default 900), --seeds, --seed-offset,
    --data, --out, --resume, --no-progress, --no-plots, --set KEY=VALUE (FTMLConfig fields),
    --shots (inner_batch), --inner-steps (inner_steps), --meta-batch (meta_batch),
    --iterations (meta_steps: N_meta per arrival).
    """
    if args.stream not in (None, STREAM):
        raise ValueError(f"--stream {args.stream!r}: {', '.join(learners)} run on {STREAM!r} only")
    if args.family is not None:
        raise ValueError(f"--family is for the meta-learning task families; {', '.join(learners)} use --stream {STREAM}")
    arrivals = _arrivals(args)
    overrides = list(args.overrides)
    for flag, field in (("shots", "inner_batch"), ("inner_steps", "inner_steps"), ("meta_batch", "meta_batch"),
                        ("iterations", "meta_steps")):
        if getattr(args, flag) is not None:
            overrides.append(f"{field}={getattr(args, flag)}")
    per_task = 900 if args.per_task is None else args.per_task
    run_online(learners, num_tasks=56 if args.tasks is None else args.tasks, per_task=per_task,
               arrivals=arrivals, seeds=list(range(args.seed_offset, args.seed_offset + args.seeds)),
               overrides=overrides, data=args.data, test_per_task=args.test_per_task,
               threshold=args.proficiency, out_dir=args.out, resume=args.resume, overwrite=args.overwrite,
               progress=not args.no_progress, plots=not args.no_plots, check_finite=not args.no_finite_check)
    return 0
