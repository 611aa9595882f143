"""MAML, FOMAML and MAML+L2F on sinusoid regression (fastcl run maml|fomaml|maml-l2f)

For every learner and seed: build the 1-40-40-1 ReLU MLP (seeded), meta-train for
``--iterations`` meta-batches of ``--meta-batch`` tasks drawn from the family's training ranges
(K = ``--shots`` support points, ``--maml-query`` query points per task, default K), checkpoint
every ``--maml-checkpoint-every`` iterations (``--resume`` continues exactly: learner, Adam and
the task generator are restored), then evaluate on ``--maml-eval-curves`` curves (100) of the
family's evaluation ranges with ``--maml-eval-points`` query points each (100): adapt on K points
with ``--maml-eval-steps`` inner steps (default: the training steps), report the query MSE. The
evaluation curves are the same for every learner and seed (drawn from a fixed seed).

Writes results.json, results.csv, ``fits.png`` (random evaluation curves with each learner's
adapted fit, as Fig. D/E of the L2F supplementary) and ``training.png`` (meta-training loss, one
record per ``--maml-checkpoint-every`` iterations; not written when a run holds fewer than two
records: nothing to draw a curve through). One bar over learners x seeds x iterations shows the
whole run's progress and ETA on stderr. Without ``--iterations`` a run is at the paper's scale
(50,000 meta-iterations, about 3 min per learner and seed on 2 cores) and says so first.
A checkpoint's fingerprint (:mod:`fastcl.rundir`) holds the learner and its config, the family,
shots, queries, meta-batch, checkpoint interval and seed: ``--resume`` refuses a checkpoint of
another run, but may extend ``--iterations`` and change the evaluation options (it re-evaluates).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import rundir
from .progress import overall_bar
from .progress import paper_scale_notice as paper_scale_notice_line
from ..algorithms import L2F, MAML, L2FConfig, MAMLConfig
from ..data.meta_tasks import make_sinusoid_family
from ..algorithms.overrides import parse_overrides
from ..finite import FiniteGuard
from ..models import MLP

__all__ = ["NAMES", "META_LEARNERS", "add_run_arguments", "run_from_args", "run_meta_experiment", "build_meta_learner",
           "paper_scale_notice"]

#: name -> (learner class, config class, fixed settings)
META_LEARNERS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "maml": (MAML, MAMLConfig, {}),
    "fomaml": (MAML, MAMLConfig, {"first_order": True}),
    "maml-l2f": (L2F, L2FConfig, {}),
}
NAMES = tuple(META_LEARNERS)
#: The options of ``fastcl run`` shared with other families that this one reads (besides
#: --seeds, --out, ... which every family reads, and its own options below).
RUN_OPTIONS = ("family", "shots", "meta_batch", "inner_steps", "iterations")
#: The paper's number of meta-iterations (the L2F supplementary's Table E, docs/maml.md), the
#: default of ``--iterations``.
PAPER_ITERATIONS = 50_000
#: Minutes of one paper-scale (learner, seed) run on this 2-core machine: ms / iteration at K = 5,
#: meta-batch 4, 1 inner step, 1 thread, measured beside another job (maml 3.6, fomaml 2.4,
#: maml-l2f 3.6 ms), times 50,000.
PAPER_MINUTES = {"maml": 3.0, "fomaml": 2.0, "maml-l2f": 3.0}
EVAL_SEED = 1_000_003  # evaluation curves: the same for every learner and seed


def add_run_arguments(group) -> None:
    group.add_argument("--maml-query", type=int, default=None,
                       help="query points per task during meta-training (default: --shots)")
    group.add_argument("--maml-eval-curves", type=int, default=100, help="evaluation curves (100)")
    group.add_argument("--maml-eval-points", type=int, default=100, help="query points per evaluation curve (100)")
    group.add_argument("--maml-eval-steps", type=int, default=None,
                       help="inner steps at evaluation (default: --inner-steps)")
    group.add_argument("--maml-checkpoint-every", type=int, default=1000,
                       help="meta-iterations between checkpoints (and training-loss records)")


#: Smallest value of this family's integer options of ``fastcl run`` (checked before any run).
RUN_MINIMUMS = {"maml_query": 1, "maml_eval_curves": 1, "maml_eval_points": 1, "maml_eval_steps": 0,
                "maml_checkpoint_every": 1}


def build_meta_learner(name: str, seed: int, overrides: dict[str, Any]) -> MAML:
    """The sinusoid MLP (1-40-40-1, seeded) and the learner ``name`` with its config."""
    if name not in META_LEARNERS:
        raise ValueError(f"unknown meta-learner {name!r}; choose from {', '.join(META_LEARNERS)}")
    cls, cfg_cls, fixed = META_LEARNERS[name]
    torch.manual_seed(seed)
    model = MLP((1, 40, 40, 1))
    return cls(model, cfg_cls(**{**fixed, **overrides}), input_shape=(1,))


def paper_scale_notice(args, learners: Sequence[str]) -> Optional[str]:
    """The line ``fastcl run`` prints before a run at the paper's scale (``--iterations`` not
    given), with its expected duration; ``None`` for a shorter run."""
    if args.iterations is not None:
        return None
    return paper_scale_notice_line(f"{PAPER_ITERATIONS:,} iterations", PAPER_MINUTES, learners, args.seeds,
                                   "--iterations N")


def run_from_args(args, learners: Sequence[str]) -> int:
    family = args.family or "sinusoid"
    run_meta_experiment(
        learners, family=family, shots=5 if args.shots is None else args.shots,
        meta_batch=4 if args.meta_batch is None else args.meta_batch,
        inner_steps=args.inner_steps if args.inner_steps is not None else 1,
        iterations=args.iterations if args.iterations is not None else PAPER_ITERATIONS,
        queries=args.maml_query, eval_curves=args.maml_eval_curves, eval_points=args.maml_eval_points,
        eval_steps=args.maml_eval_steps, checkpoint_every=args.maml_checkpoint_every,
        seeds=list(range(args.seed_offset, args.seed_offset + args.seeds)), overrides=args.overrides,
        out_dir=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
        plots=not args.no_plots, check_finite=not args.no_finite_check)
    return 0


def _positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


@rundir.releases_run_dirs
def run_meta_experiment(learners: Sequence[str], *, family: str = "sinusoid", shots: int = 5, meta_batch: int = 4,
                        inner_steps: int = 1, iterations: int = PAPER_ITERATIONS, queries: Optional[int] = None,
                        eval_curves: int = 100, eval_points: int = 100, eval_steps: Optional[int] = None,
                        checkpoint_every: int = 1000, seeds: Sequence[int] = (0,), overrides: Sequence[str] = (),
                        out_dir: Optional[str | os.PathLike] = None, resume: bool = False, progress: bool = True,
                        plots: bool = True, log: Callable[[str], None] = print,
                        overwrite: bool = False, check_finite: bool = True) -> dict[str, Any]:
    """Meta-train and evaluate ``learners`` x ``seeds``; see the module docstring (``out_dir``,
    ``resume``, ``overwrite``: as :func:`fastcl.rundir.open_run_dir`; ``check_finite``: stop on a
    non-finite meta-loss).

    ``check_finite``: stop (:class:`~fastcl.finite.NonFiniteError`, naming the meta-iteration) when
    a meta-training loss is NaN / inf; checked before every checkpoint.

    Returns the results dictionary also written to ``results.json``.
    """
    fam = make_sinusoid_family(family)
    queries = shots if queries is None else queries
    eval_steps = inner_steps if eval_steps is None else eval_steps
    _positive(shots=shots, meta_batch=meta_batch, iterations=iterations, queries=queries, eval_curves=eval_curves,
              eval_points=eval_points, checkpoint_every=checkpoint_every)
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
    if isinstance(eval_steps, bool) or not isinstance(eval_steps, int) or eval_steps < 0:
        raise ValueError(f"eval_steps must be an int >= 0, got {eval_steps!r}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    for name in learners:
        if name not in META_LEARNERS:
            raise ValueError(f"unknown meta-learner {name!r}; choose from {', '.join(META_LEARNERS)}")
    parsed = {name: parse_overrides(overrides, META_LEARNERS[name][1]) for name in learners}
    out = rundir.open_run_dir(out_dir, learners=learners, what=family, resume=resume, overwrite=overwrite)
    eval_tasks, eval_params = fam.sample(eval_curves, shots, eval_points, split="test",
                                         generator=torch.Generator().manual_seed(EVAL_SEED), return_curves=True)
    results: dict[str, Any] = {
        "family": family, "shots": shots, "meta_batch": meta_batch, "inner_steps": inner_steps,
        "iterations": iterations, "queries": queries, "eval_curves": eval_curves, "eval_points": eval_points,
        "eval_steps": eval_steps, "seeds": list(seeds), "overrides": list(overrides),
        "torch_threads": torch.get_num_threads(), "learners": {},
    }
    fits: dict[str, Any] = {}

    def job(name: str, seed: int):
        """The learner, checkpoint fingerprint and checkpoint path of one (learner, seed) run."""
        learner = build_meta_learner(name, seed, {**parsed[name], "inner_steps": inner_steps})
        fp = rundir.fingerprint(learner=name, **rundir.learner_fields(learner), family=family, shots=shots,
                                queries=queries, meta_batch=meta_batch, checkpoint_every=checkpoint_every, seed=seed)
        return learner, fp, out / f"checkpoint-{name}-seed{seed}.pt"

    for name, seed in [(n, s) for n in learners for s in seeds if resume]:  # damaged / foreign: refused first
        _, fp, ck = job(name, seed)
        if ck.is_file():
            rundir.verify_checkpoint(ck, fp)
    # one bar over every meta-iteration of every (learner, seed), with its ETA, beside the run's own
    overall = overall_bar(len(learners) * len(seeds) * iterations, unit="it", progress=progress)
    try:
        for name in learners:
            runs = []
            for seed in seeds:
                learner, fp, ck = job(name, seed)
                overall.set_description(f"overall, {name} seed {seed}")
                history, wall = _train(learner, fam, name, seed, shots, queries, meta_batch, iterations,
                                       checkpoint_every, ck, resume, progress, fp, log, check_finite, overall)
                runs.append(_evaluate(learner, eval_tasks, eval_steps, seed, history, wall, iterations))
                if seed == seeds[0]:
                    fits[name] = _fit_curves(learner, eval_tasks, eval_steps)
            mses = [r["test_mse"] for r in runs]
            results["learners"][name] = {
                "config": dataclasses.asdict(learner.config),
                "runs": runs, "mean": {"test_mse": float(np.mean(mses))}, "std": {"test_mse": float(np.std(mses))},
            }
    finally:
        overall.close()
    rundir.atomic_write_json(out / "results.json", results)
    rows = [["learner", "seed", "test_mse", "train_seconds"]]
    for name, r in results["learners"].items():
        rows += [[name, run["seed"], run["test_mse"], run["train_seconds"]] for run in r["runs"]]
        rows += [[name, "mean", r["mean"]["test_mse"], ""], [name, "std", r["std"]["test_mse"], ""]]
    rundir.atomic_write_csv(out / "results.csv", rows)
    log(summary_table(results))
    written = _plot(results, fits, eval_tasks, eval_params, fam, out, log, checkpoint_every) if plots else []
    log(f"results written to {out}/results.json, results.csv" + "".join(f", {f}" for f in written))
    return results


def _evaluate(learner: MAML, eval_tasks, eval_steps: int, seed: int, history: list, wall: float,
              iterations: int) -> dict[str, Any]:
    """The record of one (learner, seed) run: its test MSE on the evaluation curves and its training."""
    mse = learner.evaluate(eval_tasks, steps=eval_steps)
    return {"seed": seed, "test_mse": float(mse.mean()), "test_mse_sem": float(mse.std() / math.sqrt(len(mse))),
            "history": history, "train_seconds": wall, "ms_per_iteration": 1e3 * wall / iterations}


def _train(learner: MAML, fam, name: str, seed: int, shots: int, queries: int, meta_batch: int, iterations: int,
           every: int, checkpoint: Path, resume: bool, progress: bool, fingerprint: dict[str, Any],
           log: Callable[[str], None], check_finite: bool = True, overall=None) -> tuple[list, float]:
    """Meta-train one (learner, seed) run (from its checkpoint with ``resume``); ``overall``: the
    run's overall bar, advanced by every iteration (at once by those a checkpoint holds)."""
    gen = torch.Generator().manual_seed(seed)
    guard = FiniteGuard(f"{name} seed {seed}, meta-iteration {{}}", enabled=check_finite)
    history: list[list[float]] = []  # [iteration, mean meta-training loss since the last record]
    start, wall = 0, 0.0
    if resume and checkpoint.is_file():
        state = rundir.load_checkpoint(checkpoint, fingerprint)
        if int(state["iteration"]) > iterations:
            raise rundir.RunDirError(f"{checkpoint} is at iteration {state['iteration']}, beyond --iterations "
                                     f"{iterations}: resume with --iterations >= {state['iteration']}")
        learner.load_state_dict(state["learner"])
        gen.set_state(state["generator"])
        start, history, wall = int(state["iteration"]), state["history"], float(state["wall"])
        log(f"{name} seed {seed}: " + rundir.resume_message(start, iterations, checkpoint, "iteration"))
    if overall is not None:
        overall.update(start)
    bar = tqdm(range(start, iterations), initial=start, total=iterations, disable=not progress,
               desc=f"{name} seed {seed}", leave=False, mininterval=1.0)
    acc, n, begin = 0.0, 0, time.perf_counter()
    for it in bar:
        loss = learner.meta_step(fam.sample(meta_batch, shots, queries, "train", gen)).loss
        guard.record(it, loss=loss)
        if overall is not None:
            overall.update(1)
        acc, n = acc + loss, n + 1
        if (it + 1) % every == 0 or it + 1 == iterations:
            guard.check()
            history.append([it + 1, acc / n])
            bar.set_postfix(loss=f"{acc / n:.3f}")
            acc, n = 0.0, 0
            now = time.perf_counter()
            wall, begin = wall + now - begin, now
            rundir.save_checkpoint(checkpoint, {"learner": learner.state_dict(), "generator": gen.get_state(),
                                                "iteration": it + 1, "history": history, "wall": wall}, fingerprint)
    return history, wall


def _fit_curves(learner: MAML, tasks, steps: int, n: int = 4, grid: int = 200) -> dict[str, Any]:
    """Predictions of the adapted learner on a grid for the first ``n`` evaluation curves."""
    sub = type(tasks)(*(t[:n] for t in tasks))
    x = torch.linspace(-5, 5, grid).view(1, grid, 1).expand(sub.support_x.shape[0], grid, 1).contiguous()
    fast = learner.adapt(sub.support_x, sub.support_y, steps=steps)
    with torch.no_grad():
        pred = learner.predict(fast, x)
    return {"x": x[0, :, 0].tolist(), "pred": pred[..., 0].tolist()}


def summary_table(results: dict[str, Any]) -> str:
    """Markdown: test MSE (mean (std) over seeds) per learner."""
    lines = [f"{results['family']}, K = {results['shots']}, meta-batch {results['meta_batch']}, "
             f"{results['inner_steps']} inner step(s), {results['iterations']} iterations, seeds {results['seeds']}; "
             f"test MSE on {results['eval_curves']} curves x {results['eval_points']} points", "",
             "| learner | test MSE | train s | ms / iteration |", "|---|---:|---:|---:|"]
    for name, r in results["learners"].items():
        m, s = r["mean"]["test_mse"], r["std"]["test_mse"]
        mse = f"{m:.3f} ({s:.3f})" if len(r["runs"]) > 1 else f"{m:.3f}"
        sec = np.mean([run["train_seconds"] for run in r["runs"]])
        ms = np.mean([run["ms_per_iteration"] for run in r["runs"]])
        lines.append(f"| {name} | {mse} | {sec:.0f} | {ms:.2f} |")
    return "\n".join(lines)


def _plot(results, fits, tasks, curves, fam, out: Path, log: Callable[[str], None] = print,
          every: int = 1000) -> list[str]:
    """Write ``fits.png`` and, when the runs hold at least two loss records, ``training.png``
    (a run shorter than ``every`` = ``--maml-checkpoint-every`` iterations has one: nothing to
    draw, said with ``log``). Returns the names of the files written."""
    import matplotlib

    from .plots import task_ticks

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(next(iter(fits.values()))["pred"]) if fits else 0
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False, layout="constrained")
    for i, ax in enumerate(axes[0]):
        x = torch.tensor(next(iter(fits.values()))["x"], dtype=torch.float64).view(1, -1, 1)
        ax.plot(x[0, :, 0], fam.evaluate(curves[i : i + 1], x)[0, :, 0], "k-", lw=2, label="ground truth")
        for name, fit in fits.items():
            ax.plot(fit["x"], fit["pred"][i], "--", label=name)
        ax.plot(tasks.support_x[i, :, 0], tasks.support_y[i, :, 0], "k^", label=f"{results['shots']} points used")
        ax.set_title(f"A={curves[i, 0]:.2f} w={curves[i, 1]:.2f} b={curves[i, 2]:.2f}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{results['family']}, {results['shots']}-shot, after {results['eval_steps']} step(s)")
    rundir.atomic_savefig(fig, out / "fits.png", dpi=110)
    plt.close(fig)

    records = min(len(run["history"]) for r in results["learners"].values() for run in r["runs"])
    if records < 2:
        log(f"training.png not written: {results['iterations']} iteration(s) hold {records} training-loss record "
            f"(one per --maml-checkpoint-every {every} iterations and one at the end): nothing to draw; a smaller "
            "--maml-checkpoint-every records more")
        return ["fits.png"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, r in results["learners"].items():
        h = np.array([run["history"] for run in r["runs"]])  # [seeds, records, 2]
        # a run of a few checkpoint intervals has a few records: show them as points
        ax.plot(h[0, :, 0], h[:, :, 1].mean(0), label=name, marker="o" if h.shape[1] <= 20 else None)
    ax.set_yscale("log")
    task_ticks(ax.xaxis)  # integer iterations, also for a run of a few
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("meta-training query MSE")
    ax.set_title(f"{results['family']}, K = {results['shots']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    rundir.atomic_savefig(fig, out / "training.png", dpi=110)
    plt.close(fig)
    return ["fits.png", "training.png"]

