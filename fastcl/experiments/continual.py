"""Continual-learning experiments behind ``fastcl run``: learners x seeds on one stream.

For every learner and seed: build the stream (the seed also picks the permutations / rotations
and the examples of each task), build the model (seeded), train with :func:`fastcl.train.run_stream`
(checkpoint after every task; ``resume`` continues an interrupted run exactly), and collect the
accuracy matrix. Then print a summary table (mean and std over seeds), and write ``results.json``,
``results.csv`` and two PNG plots (average accuracy versus tasks learned, as HAL's Fig. 1, and
the accuracy matrix) into the output directory. The directory, the atomic writes and the
checkpoints' fingerprints follow :mod:`fastcl.rundir` (docs/runs.md).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from .. import rundir
from .progress import done_counter, overall_bar
from ..algorithms.overrides import parse_overrides
from ..algorithms import (AGEM, EMCL, EWC, HAL, AGEMConfig, CloneAndFinetune, EMCLConfig, ERConfig, ERRing, EWCConfig,
                         Finetune, FinetuneConfig, HALConfig, LaMAML, LaMAMLConfig, Multitask, OracleConfig)
from ..data.streams import STREAMS, Stream, make_stream
from ..models import MLP, ReducedResNet18
from ..train import checkpoint_fingerprint, run_stream

__all__ = ["LEARNERS", "build_learner", "run_experiment", "parse_overrides"]


def _er_like(cls, cfg_cls, **fixed):
    def make(model, stream, memory, overrides):
        cfg = cfg_cls(**{"per_class": memory, "num_tasks": len(stream), **fixed, **overrides})
        return cls(model, stream.num_classes, stream.input_shape, cfg, _task_classes(stream))
    return make, cfg_cls


def _plain(cls, cfg_cls, **fixed):
    def make(model, stream, memory, overrides):
        cfg = cfg_cls(**{**fixed, **overrides})
        return cls(model, stream.num_classes, stream.input_shape, cfg, _task_classes(stream))
    return make, cfg_cls


#: Table II settings of the replay meta-learners that differ on Many Permutations (La-MAML: memory
#: 500; EMCL has no memory in Algorithm 1: its replay variant takes the memory of :data:`_EMCL_REPLAY`).
_MANY_PERMUTATIONS = {
    LaMAML: {"memory_size": 500, "alpha0": 0.1, "eta": 0.1},
    EMCL: {"alpha0": 0.15, "beta": 0.03, "gamma": 0.1, "r": 0.02},
}

#: ``emcl-replay``: the reservoir of La-MAML's Table II (200 examples; 500 on Many Permutations).
_EMCL_REPLAY = {"permuted-mnist": 200, "many-permutations": 500}


def _emcl(**fixed):
    """EMCL and its Table IV / Fig. 3 ablations, all in the reading of the default ``emcl``
    (Algorithm 1: no memory unless ``memory_size`` is set; only ``fixed`` differs)."""
    return _reservoir(EMCL, EMCLConfig, **fixed)


def _emcl_replay():
    make_default, cfg_cls = _emcl()

    def make(model, stream, memory, overrides):
        size = _EMCL_REPLAY.get(stream.name, _EMCL_REPLAY["permuted-mnist"])
        return make_default(model, stream, memory, {"memory_size": size, **overrides})
    return make, cfg_cls


def _reservoir(cls, cfg_cls, **fixed):
    """La-MAML / EMCL: the memory is a reservoir of ``memory_size`` examples (a config field,
    ``--set memory_size=N``), not ``--memory`` examples per class per task, which they ignore."""
    def make(model, stream, memory, overrides):
        paper = _MANY_PERMUTATIONS[cls] if stream.name == "many-permutations" else {}
        cfg = cfg_cls(**{**paper, **fixed, **overrides})
        return cls(model, stream.num_classes, stream.input_shape, cfg, _task_classes(stream))
    return make, cfg_cls


def _task_classes(stream: Stream):
    return [t.classes for t in stream] if stream.multi_head else None


#: name -> (factory(model, stream, memory, overrides), config class)
LEARNERS: dict[str, tuple[Callable, type]] = {
    "finetune": _plain(Finetune, FinetuneConfig),
    "ewc": _plain(EWC, EWCConfig),
    "agem": _er_like(AGEM, AGEMConfig),
    "er-ring": _er_like(ERRing, ERConfig),
    "hal": _er_like(HAL, HALConfig),
    "hal-random": _er_like(HAL, HALConfig, anchors="random"),
    "hal-data": _er_like(HAL, HALConfig, anchors="data"),
    "hal-paper": _er_like(HAL, HALConfig, anchor_procedure="paper"),  # anchors as the paper's text builds them
    "clone-and-finetune": _plain(CloneAndFinetune, OracleConfig),
    "multitask": _plain(Multitask, OracleConfig),
    "lamaml": _reservoir(LaMAML, LaMAMLConfig),
    "lamaml-fo": _reservoir(LaMAML, LaMAMLConfig, second_order=False),
    "emcl": _emcl(),  # Algorithm 1: inner loop and meta loss on the incoming batch, no memory
    "emcl-replay": _emcl_replay(),  # + a reservoir replayed in the inner loop and the importance
    "emcl-nopgd": _emcl(variant="nopgd"),  # Table IV / Fig. 3 ablations of the default emcl
    "emcl-lr": _emcl(variant="lr"),
    "emcl-si": _emcl(variant="si"),
}


def default_model(stream: Stream) -> torch.nn.Module:
    """HAL's models: MLP 784-256-256-10 on MNIST streams, the reduced ResNet-18 on split CIFAR."""
    if stream.input_shape == (3, 32, 32):
        return ReducedResNet18(num_classes=stream.num_classes)
    return MLP((int(np.prod(stream.input_shape)), 256, 256, stream.num_classes))


def mlp_100(stream: Stream) -> torch.nn.Module:
    """The MLP 784-100-100-10 of MER, La-MAML and EMCL on the MNIST streams (HAL's model elsewhere)."""
    if stream.input_shape == (3, 32, 32):
        return default_model(stream)
    return MLP((int(np.prod(stream.input_shape)), 100, 100, stream.num_classes))


#: learner name -> its default model, for learners whose paper uses another model than HAL's.
DEFAULT_MODELS: dict[str, Callable[[Stream], torch.nn.Module]] = {
    name: mlp_100 for name in (
        "lamaml", "lamaml-fo", "emcl", "emcl-replay", "emcl-nopgd", "emcl-lr", "emcl-si")}


def build_learner(name: str, stream: Stream, memory: int, overrides: dict[str, Any], seed: int,
                  model_fn: Optional[Callable[[Stream], torch.nn.Module]] = None):
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    make, _ = LEARNERS[name]
    torch.manual_seed(seed)
    model = (model_fn or DEFAULT_MODELS.get(name, default_model))(stream)
    return make(model, stream, memory, {"seed": seed, **overrides})


def _fmt(r: dict[str, Any], key: str, scale: float = 100.0) -> str:
    """``mean (std)`` of one metric over a learner's seeds (just the mean for one seed)."""
    mean, std = r["mean"][key] * scale, r["std"][key] * scale
    return f"{mean:.1f} ({std:.1f})" if len(r["runs"]) > 1 else f"{mean:.1f}"


@rundir.releases_run_dirs
def run_experiment(learners: Sequence[str], stream_name: str, *, num_tasks: int, per_task: Optional[int],
                   memory: int, seeds: Sequence[int], overrides: Sequence[str] = (), data: Optional[str] = None,
                   skip_first: int = 0, out_dir: Optional[str | os.PathLike] = None, resume: bool = False,
                   progress: bool = True, plots: bool = True, batch_size: int = 10,
                   log: Callable[[str], None] = print, overwrite: bool = False,
                   check_finite: bool = True) -> dict[str, Any]:
    """Run ``learners`` x ``seeds`` on the stream ``stream_name``; see the module docstring.

    ``out_dir`` ``None`` writes into a new directory ``results/LEARNERS-STREAM-TIMESTAMP``; an
    existing run's directory needs ``resume`` (continue it) or ``overwrite`` (replace it); see
    :func:`fastcl.rundir.open_run_dir`. ``check_finite``: stop on a NaN / inf input or loss (see
    :func:`fastcl.train.run_stream`).

    Returns the results dictionary also written to ``results.json``.
    """
    if stream_name not in STREAMS:
        raise ValueError(f"unknown stream {stream_name!r}; choose from {', '.join(STREAMS)}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    if memory < 1:
        raise ValueError(f"memory (examples per class per task) must be >= 1, got {memory}")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks (--tasks) must be an int >= 1, got {num_tasks!r}")
    if skip_first < 0 or skip_first >= num_tasks:
        raise ValueError(f"skip_first (--skip-first) must be in [0, num_tasks = {num_tasks}), got {skip_first}")
    for name in learners:
        if name not in LEARNERS:
            raise ValueError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    parsed = {name: parse_overrides(overrides, LEARNERS[name][1]) for name in learners}
    if stream_name == "split-cifar100" and data is None:
        raise ValueError("split-cifar100 needs --data pointing at the CIFAR-100 python files")
    data_id = rundir.data_fields("cifar100" if stream_name == "split-cifar100" else "mnist", data)
    out = rundir.open_run_dir(out_dir, learners=learners, what=stream_name, resume=resume, overwrite=overwrite)
    results: dict[str, Any] = {
        "stream": stream_name, "tasks": num_tasks, "per_task": per_task, "memory": memory,
        "seeds": list(seeds), "skip_first": skip_first, "overrides": list(overrides), "data": data,
        "torch_threads": torch.get_num_threads(), "learners": {}, **rundir.fingerprint(**data_id),
    }
    if stream_name == "split-cifar100":
        stream_kwargs: dict[str, Any] = {"root": data}
    else:
        stream_kwargs = {"source": data} if per_task is None else {"source": data, "per_task": per_task}
    streams: dict[int, Stream] = {}  # one stream per seed, shared by the learners

    def job(name: str, seed: int):
        """The stream, learner and checkpoint fingerprint fields of one (learner, seed) run."""
        if seed not in streams:
            streams[seed] = make_stream(stream_name, num_tasks=num_tasks, seed=seed, **stream_kwargs)
        learner = build_learner(name, streams[seed], memory, parsed[name], seed)
        fp = rundir.fingerprint(learner=name, memory=memory, per_task=len(streams[seed][0].x_train), **data_id)
        return streams[seed], learner, fp

    checkpoints = {(n, s): out / f"checkpoint-{n}-seed{s}.pt" for n in learners for s in seeds}
    for (name, seed), ck in checkpoints.items():  # with --resume, a damaged or foreign one is refused first
        if resume and ck.is_file():
            stream, learner, fp = job(name, seed)
            rundir.verify_checkpoint(ck, checkpoint_fingerprint(learner, stream, batch_size, seed, fp))
    # one bar over every (learner, seed, task) of the run, with its ETA; run_stream adds a bar per task
    overall = overall_bar(len(learners) * len(seeds) * num_tasks, unit="task", progress=progress)
    tasks_done = done_counter(overall)  # a resumed run jumps over its done tasks

    try:
        for name in learners:
            runs = []
            for seed in seeds:
                stream, learner, fp = job(name, seed)
                ck = checkpoints[name, seed]
                overall.set_description(f"overall, {name} seed {seed}")
                begin = time.perf_counter()
                res = run_stream(learner, stream, batch_size=batch_size, seed=seed, checkpoint=ck, resume=resume,
                                 progress=progress, fingerprint=fp, log=lambda m: log(f"{name} seed {seed}: {m}"),
                                 check_finite=check_finite,
                                 on_task_end=lambda t, _accs: tasks_done(name, seed, t + 1))
                tasks_done(name, seed, num_tasks)  # also a resumed run that was already done
                wall = time.perf_counter() - begin
                summary = res.summary(skip_first)
                config = dataclasses.asdict(learner.config)
                runs.append({"seed": seed, "acc": res.acc.values.tolist(), "summary": summary, "wall_seconds": wall,
                             "train_seconds_per_task": res.train_seconds})
            agg = {k: [r["summary"][k] for r in runs] for k in runs[0]["summary"]}
            results["learners"][name] = {
                "config": {k: v for k, v in config.items() if k != "seed"},
                "runs": runs,
                "mean": {k: float(np.mean(v)) for k, v in agg.items()},
                "std": {k: float(np.std(v)) for k, v in agg.items()},
            }
    finally:
        overall.close()
    _write(results, out)
    log(summary_table(results))
    if plots:
        try:
            _plot(results, out)
        except ImportError as e:  # pragma: no cover - matplotlib is a dependency
            log(f"plots skipped: {e}")
    log(f"results written to {out}/results.json, results.csv" + (", accuracy.png, matrix.png" if plots else ""))
    return results


def _memory_label(config: dict[str, Any], per_class: int) -> str:
    """What a learner's memory is: a reservoir of ``memory_size``, a ring of m per class per task,
    or none."""
    if "memory_size" in config:
        return f"reservoir {config['memory_size']}"
    if "per_class" in config:
        return f"{per_class} per class per task"
    return "-"


def summary_table(results: dict[str, Any]) -> str:
    """Markdown table: accuracy and forgetting (%, mean (std) over seeds), BWT, training time."""
    lines = [f"{results['stream']}, {results['tasks']} tasks, seeds {results['seeds']}"
             + (f", first {results['skip_first']} tasks left out" if results["skip_first"] else ""),
             "", "| learner | memory | accuracy (%) | forgetting (%) | BWT (%) | train s |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in results["learners"].items():
        lines.append(f"| {name} | {_memory_label(r['config'], results['memory'])} | {_fmt(r, 'accuracy')} | "
                     f"{_fmt(r, 'forgetting')} | {_fmt(r, 'bwt')} | {_fmt(r, 'train_seconds', 1.0)} |")
    return "\n".join(lines)


def _write(results: dict[str, Any], out: Path) -> None:
    rundir.atomic_write_json(out / "results.json", results)
    rows = [["learner", "seed", "accuracy", "forgetting", "bwt", "learning_accuracy", "train_seconds"]]
    for name, r in results["learners"].items():
        stats = [(run["seed"], run["summary"]) for run in r["runs"]] + [(stat, r[stat]) for stat in ("mean", "std")]
        rows += [[name, seed, s["accuracy"], s["forgetting"], s["bwt"], s["learning_accuracy"], s["train_seconds"]]
                 for seed, s in stats]
    rundir.atomic_write_csv(out / "results.csv", rows)


def average_accuracy_curve(acc: np.ndarray) -> np.ndarray:
    """Average accuracy over the tasks seen so far after each task: ``mean_{j<=i} acc[i][j]``."""
    return np.array([acc[i, : i + 1].mean() for i in range(acc.shape[0])])


def _plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    from .plots import task_ticks

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["learners"].items():
        curves = np.stack([average_accuracy_curve(np.asarray(run["acc"])) for run in r["runs"]]) * 100
        x = np.arange(1, curves.shape[1] + 1)
        ax.plot(x, curves.mean(0), label=name, marker="o", markersize=3)
        if curves.shape[0] > 1:
            ax.fill_between(x, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.2)
    task_ticks(ax.xaxis)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("average accuracy on tasks seen (%)")
    ax.set_title(results['stream'])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    rundir.atomic_savefig(fig, out / "accuracy.png", dpi=120)
    plt.close(fig)

    names = list(results["learners"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names) + 1.0, 3.6), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes[0], names):
        mats = np.stack([np.asarray(run["acc"]) for run in results["learners"][name]["runs"]]) * 100
        im = ax.imshow(mats.mean(0), vmin=0, vmax=100, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("task evaluated j")
        ax.set_ylabel("after training task i")
        task_ticks(ax.xaxis, zero_based=True)
        task_ticks(ax.yaxis, zero_based=True)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
    rundir.atomic_savefig(fig, out / "matrix.png", dpi=120)
    plt.close(fig)
