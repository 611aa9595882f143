"""Reptile / CTS options (large-scale meta-learning, the CTS paper's experiments)

The learners of the CTS paper behind ``fastcl run``:

    fastcl run reptile,cts,cts-noshift,cts-accurate --family synthetic2d --seeds 5
    fastcl run reptile,cts,mtl-pretrain,scratch-init --family images --inner-steps 100 --repetitions 10
    fastcl run cts --family synthetic2d --nproc 2          # tasks sharded over 2 processes
    torchrun --nproc-per-node 2 -m fastcl.cli run cts      # the same, started by torchrun
    fastcl run cts-error                                   # approximation error vs alpha, beta, k

Synthetic 2D (Sec. 4.1): T = 8 tasks (``--tasks``), K = 100 (``--inner-steps``), M = 3
(``--repetitions``: M counts repetitions of the task sequence, so this family refuses the
meta-iteration count ``--iterations`` of MAML / FTML), alpha 0.05, beta 0.1, SGD momentum 0.9 re-created at every repetition (the
authors' ``synthetic/algorithm.py``), the authors' constants c0, c2 (``--cts-coeffs``), rotations
from the seed or the authors' ``env.npz`` (``--cts-angles``), one or several starts
(``--cts-start``, ``grid``: the authors' nine) (``--set key=value`` overrides any
:class:`~fastcl.algorithms.cts.CTSConfig` field). The meta-test is the task-average loss after
``--cts-test-steps`` inner steps from phi, with Adam and with SGD-momentum (both lr alpha),
recorded along meta-training against cumulative inner steps per task. Writes results.json,
results.csv, trajectories.png (phi over the Adam meta-test landscape, Fig. 5) and metatest.png.

Images: meta-train on heterogeneous 10-way tasks with their own heads (``--cts-train``), meta-test
by fine-tuning on held-out ones (``--cts-test``), beta from supp. Table 3 at K = 100 (Reptile 2,
CTS 0.1), the optimizer state kept across repetitions (supp. C.2); ``mtl-pretrain`` is multi-task pre-training (shared trunk,
one head per task, the same number of steps) and ``scratch-init`` a random initialization.

Every finished (learner, seed) run is kept as ``LEARNER-seedS.json`` (checksummed, with the run's
fingerprint: learner, config, family options, seed, data digest; :mod:`fastcl.rundir`);
``--resume`` reuses those of the same configuration (it says how many) and refuses the others;
an unfinished run starts over. One bar over every inner step of every (learner, seed, start)
shows the whole run's progress and ETA on stderr; the run ends by saying where its results went.
An option that the chosen family does not read (``--data`` for synthetic2d, ``--tasks`` or a
synthetic ``--cts-*`` option for images) is refused, not ignored.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .. import rundir
from .progress import overall_bar
from ..algorithms.cts import CTS, CTSAccurate, CTSConfig, approximation_error, inner_update_
from ..algorithms.reptile import Reptile
from ..data.cts_tasks import (AUTHORS_ANGLES, C0, C2, IMAGE_TASKS, SYNTHETIC_FORMS, SmallConvNet, adapt_points,
                              image_tasks, synthetic2d)
from ..finite import FiniteGuard

NAMES = ("reptile", "cts", "cts-accurate", "cts-noshift", "mtl-pretrain", "scratch-init", "cts-error")
FAMILIES = ("synthetic2d", "images")

#: name -> (class, fixed config fields)
META_LEARNERS = {"reptile": (Reptile, {}), "cts": (CTS, {}), "cts-accurate": (CTSAccurate, {}),
                 "cts-noshift": (CTS, {"shift": False})}

#: the images family's beta: the paper's supp. Table 3 at K = 100 (Reptile 2, Ours 0.1)
_IMAGE_BETA = {"reptile": 2.0, "cts": 0.1, "cts-noshift": 0.1, "cts-accurate": 0.1}
#: ``--cts-start grid``: the nine starts of the authors' ``synthetic/meta_training.py``
START_GRID = tuple((x, y) for x in (-5.0, 5.0, 15.0) for y in (-5.0, 5.0, 15.0))
IMAGE_TRAIN = ("mnist", "mnist-rot90", "fashion", "fashion-inverted")
IMAGE_TEST = ("mnist-inverted", "fashion-rot90")


def add_run_arguments(g) -> None:
    g.add_argument("--repetitions", type=int, default=None,
                   help="M: repetitions of the task sequence, each K inner steps per task (synthetic2d 3, "
                        "images 10); this family's count of the run's length, instead of --iterations")
    g.add_argument("--nproc", type=int, default=1,
                   help="CTS/Reptile: shard the task learners over N processes (torch.distributed, gloo on CPU)")
    g.add_argument("--cts-form", choices=SYNTHETIC_FORMS, default="scaled",
                   help="synthetic2d: the authors' scaled-argument loss (default) or the printed one")
    g.add_argument("--cts-start", default="-5,5",
                   help="synthetic2d: the initial phi 'x,y' (default -5,5; --cts-start=-5,5), several "
                        "separated by ';' ('-5,5;15,5'), or 'grid': the authors' nine starts {-5,5,15}^2; "
                        "results are means over the starts")
    g.add_argument("--cts-angles", choices=("seed", "authors"), default="seed",
                   help="synthetic2d: task rotations drawn from the seed (default) or the authors' env.npz "
                        "ones (8 tasks; the seeds then repeat one deterministic run)")
    g.add_argument("--cts-coeffs", default=f"{C0!r},{C2!r}",
                   help="synthetic2d: c0,c2 of the scaled loss (default the authors' env.npz values "
                        "0.7384512...,0.9954126...; '0.738,0.995' are the rounded ones of fastcl <= 0.x)")
    g.add_argument("--cts-test-steps", type=int, default=None,
                   help="meta-test inner steps (synthetic2d 100, images 100)")
    g.add_argument("--cts-eval-every", type=int, default=10,
                   help="synthetic2d: meta-test every N cumulative inner steps")
    g.add_argument("--cts-train", default=",".join(IMAGE_TRAIN), help="images: meta-training tasks")
    g.add_argument("--cts-test", default=",".join(IMAGE_TEST), help="images: held-out meta-test tasks")
    g.add_argument("--cts-per-task", type=int, default=2000, help="images: training images per meta-train task")
    g.add_argument("--cts-test-train", type=int, default=1000, help="images: training images per meta-test task")


#: Smallest value of this family's integer options of ``fastcl run`` (checked before any run).
RUN_MINIMUMS = {"inner_steps": 1, "repetitions": 1, "nproc": 1, "cts_test_steps": 1, "cts_eval_every": 1, "cts_per_task": 1,
                "cts_test_train": 1}


def _given(value, default):
    """``value`` unless the option was not given (``None``); 0 is a value, not "unset"."""
    return default if value is None else value


def _two_numbers(text: str, option: str, example: str) -> torch.Tensor:
    try:
        pair = torch.tensor([float(v) for v in text.split(",")], dtype=torch.float64)
    except ValueError:
        pair = None
    if pair is None or pair.shape != (2,) or not bool(torch.isfinite(pair).all()):
        raise ValueError(f"{option} must be two finite numbers (e.g. {option}={example}), got {text!r}")
    return pair


def start_point(text: str) -> torch.Tensor:
    """``"x,y"`` (one ``--cts-start`` point) -> the initial phi, two finite float64 numbers."""
    return _two_numbers(text, "--cts-start", "-5,5")


def start_points(text: str) -> list[torch.Tensor]:
    """``--cts-start``: ``"x,y"``, several separated by ``;``, or ``"grid"`` (:data:`START_GRID`)."""
    if text.strip() == "grid":
        return [torch.tensor(p, dtype=torch.float64) for p in START_GRID]
    return [start_point(t) for t in text.split(";")]


def coeffs(text: str) -> tuple[float, float]:
    """``--cts-coeffs "c0,c2"`` -> two finite numbers > 0."""
    c = _two_numbers(text, "--cts-coeffs", "0.7384512,0.9954126")
    if not bool((c > 0).all()):
        raise ValueError(f"--cts-coeffs must be two numbers > 0, got {text!r}")
    return float(c[0]), float(c[1])


#: The options of ``fastcl run`` shared with other families that this one reads (besides --seeds,
#: --out, ... which every family reads, and its own options above); which of them, and of its
#: own, a task family reads is :data:`FAMILY_OPTIONS`.
RUN_OPTIONS = ("family", "tasks", "inner_steps", "data")
#: What the CLI says for an option of another family that a user may expect here.
OPTION_HINTS = {"iterations": "this family counts repetitions of the task sequence (M), not meta-iterations: "
                              "use --repetitions"}
_SHARED = ("overrides", "inner_steps", "repetitions", "nproc", "cts_test_steps")
#: task family (and ``cts-error``) -> the options of this family's that it reads
FAMILY_OPTIONS = {
    "synthetic2d": (*_SHARED, "family", "tasks", "cts_form", "cts_start", "cts_angles", "cts_coeffs",
                    "cts_eval_every"),
    "images": (*_SHARED, "family", "data", "cts_train", "cts_test", "cts_per_task", "cts_test_train"),
    "cts-error": ("data",),
}
#: every option this family declares or reads (the CLI refuses the others)
_OWN = {"repetitions", "nproc", "cts_form", "cts_start", "cts_angles", "cts_coeffs", "cts_test_steps",
        "cts_eval_every", "cts_train", "cts_test", "cts_per_task", "cts_test_train", "overrides", *RUN_OPTIONS}


def _check_options_read(args, learners: Sequence[str]) -> None:
    """Refuse an option given on the command line (``args.options_given``, set by the CLI's
    parser) that the chosen task family, or ``cts-error``, does not read."""
    given = getattr(args, "options_given", None)
    if given is None:
        return
    what = "cts-error" if "cts-error" in learners else (args.family or "synthetic2d")
    if what not in FAMILY_OPTIONS:
        return  # an unknown --family: refused by name when the run starts
    unread = sorted(d for d in given & _OWN if d not in FAMILY_OPTIONS[what])
    if unread:
        opt = "--set" if unread[0] == "overrides" else "--" + unread[0].replace("_", "-")
        where = "cts-error" if what == "cts-error" else f"the {what} family ({', '.join(learners)})"
        reads = ", ".join("--set" if d == "overrides" else "--" + d.replace("_", "-") for d in FAMILY_OPTIONS[what])
        raise ValueError(f"{opt} does nothing for {where}, which reads {reads} (and --seeds, --out, ...): "
                         "leave it out")


def check_run_args(args, learners: Sequence[str]) -> None:
    """The checks of ``fastcl run`` for this family's options that a minimum cannot express."""
    _check_options_read(args, learners)
    start_points(args.cts_start)
    coeffs(args.cts_coeffs)
    if args.cts_angles == "authors" and _given(args.tasks, 8) != len(AUTHORS_ANGLES):
        raise ValueError(f"--cts-angles authors has {len(AUTHORS_ANGLES)} tasks, got --tasks {args.tasks}")


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    from ..algorithms.overrides import parse_overrides

    return parse_overrides(items, CTSConfig)


def _config(name: str, family: str, args, overrides: dict[str, Any]) -> CTSConfig:
    base: dict[str, Any] = {}
    if family == "synthetic2d":
        base = dict(inner_lr=0.05 if args.cts_form == "scaled" else 0.002, meta_lr=0.1,
                    inner_steps=_given(args.inner_steps, 100), repetitions=_given(args.repetitions, 3))
    else:
        # supp. C.2 and the authors' image code (hard_reset=False): the optimizer state is kept
        base = dict(inner_lr=0.02, meta_lr=_IMAGE_BETA.get(name, 0.1), reset_optimizer=False,
                    inner_steps=_given(args.inner_steps, 100), repetitions=_given(args.repetitions, 10))
    base.update(META_LEARNERS.get(name, (None, {}))[1])
    base.update(overrides)
    return CTSConfig(**base)


def _guard(name: str, seed: int, args) -> FiniteGuard:
    """The NaN / inf check of one meta-training run (off with --no-finite-check)."""
    return FiniteGuard(f"{name} seed {seed}, inner step {{}} (per task, cumulative)",
                       enabled=not getattr(args, "no_finite_check", False), every=200)


# ------------------------------------------------------------------------------ synthetic 2D
def _family(args, seed: int):
    angles = AUTHORS_ANGLES if getattr(args, "cts_angles", "seed") == "authors" else None
    return synthetic2d(_given(args.tasks, 8), seed=seed, form=args.cts_form, coeffs=coeffs(args.cts_coeffs),
                       angles=angles)


def _synthetic_one(name: str, seed: int, cfg: CTSConfig, args, distributed: bool = False,
                   tick: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """One meta-training run per ``--cts-start`` point on the synthetic family; with several
    starts the record holds each start's record under ``"starts"`` and, at the top level, the
    mean over the starts of every meta-test curve (rank 0 meaningful). ``tick(1)`` after every
    inner step (the overall progress bar)."""
    recs = [_synthetic_start(name, seed, cfg, args, start, distributed, tick) for start in start_points(args.cts_start)]
    if len(recs) == 1:
        return recs[0]
    rec = dict(recs[0], starts=recs)
    for key in ("test_adam", "test_momentum"):
        rec[key] = np.mean([r[key] for r in recs], 0).tolist()
    for key in ("final_adam", "final_momentum"):
        rec[key] = float(np.mean([r[key] for r in recs]))
    rec["train_seconds"] = float(np.sum([r["train_seconds"] for r in recs]))
    return rec


def _synthetic_start(name: str, seed: int, cfg: CTSConfig, args, start: torch.Tensor,
                     distributed: bool = False, tick: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """One meta-training run on the synthetic family from ``start``; returns its record."""
    T = _given(args.tasks, 8)
    fam = _family(args, seed)
    cls = META_LEARNERS[name][0]
    learner = cls({"x": start}, fam.loss, T, cfg, distributed=distributed)
    steps = _given(args.cts_test_steps, 100)
    lr = cfg.inner_lr
    rec: dict[str, Any] = {"seed": seed, "phi": [start.tolist()], "cum_steps": [], "test_adam": [], "test_momentum": []}

    def evaluate():
        x = learner.phi["x"][None]
        rec["cum_steps"].append(learner.inner_steps_done)
        rec["test_adam"].append(adapt_points(fam, x, steps, "adam", lr).item())
        rec["test_momentum"].append(adapt_points(fam, x, steps, "momentum", lr, cfg.momentum).item())

    last = [-(10 ** 9)]
    guard = _guard(name, seed, args)

    def callback(lr_, losses):
        if tick is not None:
            tick(1)
        guard.record(learner.inner_steps_done, loss=losses, phi=learner.phi["x"])
        rec["phi"].append(learner.phi["x"].tolist())
        if learner.inner_steps_done - last[0] >= args.cts_eval_every:
            last[0] = learner.inner_steps_done
            evaluate()

    evaluate()
    t0 = time.perf_counter()
    learner.run(fam.batch_fn, callback, progress=not args.no_progress and learner.rank == 0,
                desc=f"{name} seed {seed}")
    guard.check()
    rec["train_seconds"] = time.perf_counter() - t0
    if rec["cum_steps"][-1] != learner.inner_steps_done:
        evaluate()
    rec.update(final_adam=rec["test_adam"][-1], final_momentum=rec["test_momentum"][-1],
               meta_steps=learner.meta_steps, inner_steps=learner.inner_steps_done,
               final_phi=learner.phi["x"].tolist())
    return rec


def _dist_worker(rank: int, world: int, kind: str, name: str, seed: int, cfg: dict, args_dict: dict, out: str) -> None:
    import argparse

    args = argparse.Namespace(**args_dict)
    if kind == "synthetic2d":
        rec = _synthetic_one(name, seed, CTSConfig(**cfg), args, distributed=True)
    else:
        rec = _images_one(name, seed, CTSConfig(**cfg), args, distributed=True)
    if rank == 0:
        rundir.save_checkpoint(out, rec)


def steps_of_run(family: str, name: str, cfg: CTSConfig, args) -> int:
    """The steps one (learner, seed) run advances the overall bar by: ``repetitions x
    inner_steps`` per ``--cts-start`` point for the meta-learners and multi-task pre-training (one
    step: an inner step of every task learner), none for ``scratch-init``."""
    if name == "scratch-init":
        return 0
    starts = len(start_points(args.cts_start)) if family == "synthetic2d" else 1
    return starts * cfg.repetitions * cfg.inner_steps


def _run_one(family: str, name: str, seed: int, cfg: CTSConfig, args, out_dir: Path,
             tick: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    nproc = getattr(args, "nproc", 1) or 1
    if nproc == 1 or name in ("mtl-pretrain", "scratch-init"):
        return (_synthetic_one if family == "synthetic2d" else _images_one)(name, seed, cfg, args, tick=tick)
    from ..distributed import spawn

    out = out_dir / f".dist-{name}-{seed}-{os.getpid()}.pt"
    spawn(_dist_worker, nproc, family, name, seed, asdict(cfg), vars(args).copy() | {"func": None}, str(out),
          threads=max(1, torch.get_num_threads() // nproc))
    rec = rundir.load_checkpoint(out)
    out.unlink()
    rec["nproc"] = nproc
    if tick is not None:  # the processes ran the steps: counted when they are done
        tick(steps_of_run(family, name, cfg, args))
    return rec


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _plot_synthetic(results: dict, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = results["seeds"][0]
    fam = _family(args, seed)
    lr = next(iter(results["learners"].values()))["config"]["inner_lr"]
    n = 80
    xs = torch.linspace(-10, 20, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    z = adapt_points(fam, grid, _given(args.cts_test_steps, 100), "adam", lr).reshape(n, n)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cs = ax.contourf(xs.numpy(), xs.numpy(), np.log10(z.numpy() + 1e-3), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 task-average loss after meta-test (Adam)")
    ax.scatter(fam.targets[:, 0], fam.targets[:, 1], c="red", s=12, label="task targets")
    for name, r in results["learners"].items():
        color = None
        for i, run in enumerate(r["runs"][0].get("starts", [r["runs"][0]])):
            path = np.asarray(run["phi"])
            line, = ax.plot(path[:, 0], path[:, 1], lw=1.5, color=color, label=None if i else name)
            color = line.get_color()
            ax.plot(path[-1, 0], path[-1, 1], "o", ms=4, color=color)
    ax.set_title(f"meta-trajectories of phi (seed {seed}); background: Fig. 5(c) map")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    rundir.atomic_savefig(fig, out / "trajectories.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results["learners"].items():
        for ax, key in zip(axes, ("test_adam", "test_momentum")):
            runs = r["runs"]
            L = min(len(x[key]) for x in runs)
            y = np.mean([x[key][:L] for x in runs], 0)
            ax.plot(runs[0]["cum_steps"][:L], y, label=name)
    for ax, t in zip(axes, ("Adam", "SGD momentum")):
        ax.set_xscale("symlog")
        ax.set_yscale("log")
        ax.set_xlabel("cumulative inner steps per task")
        ax.set_ylabel(f"meta-test loss ({t})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    rundir.atomic_savefig(fig, out / "metatest.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ images
def _image_model(seed: int) -> SmallConvNet:
    torch.manual_seed(seed)
    return SmallConvNet()


def _fine_tune(trunk: dict[str, torch.Tensor], tasks, cfg: CTSConfig, steps: int, seed: int) -> list[float]:
    """Meta-test: fine-tune trunk + a fresh head on each held-out task (stacked, no meta step);
    returns the test accuracy of each."""
    fresh = dict(_image_model(10_000 + seed).named_parameters())
    init = {n: (trunk[n] if n in trunk else fresh[n]).detach() for n in fresh}
    ft = CTS(init, tasks.loss, len(tasks), CTSConfig(inner_lr=cfg.inner_lr, meta_lr=0.0, inner_steps=steps,
                                                       repetitions=1, optimizer="momentum", momentum=0.9),
             heads=["head.weight", "head.bias"], distributed=False)
    ft.run(tasks.batch_fn)
    accs = []
    with torch.no_grad():
        for t in range(len(tasks)):
            p = {n: ft.theta[n][t] for n in ft.names}
            logits = torch.func.functional_call(tasks.model, p, (tasks.x_test[t],))
            accs.append(float((logits.argmax(1) == tasks.y_test[t]).float().mean()))
    return accs


def _mtl(train, model: SmallConvNet, cfg: CTSConfig, steps: int, progress: bool,
         tick: Optional[Callable[[int], None]] = None) -> dict[str, torch.Tensor]:
    """Multi-task pre-training: one trunk, one head per task, the mean loss over the tasks."""
    heads = ("head.weight", "head.bias")
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    trunk = {n: p for n, p in params.items() if n not in heads}
    hs = {n: params[n].unsqueeze(0).repeat(len(train), *[1] * params[n].dim()).contiguous() for n in heads}

    def loss(trunk, hs, batch):
        return torch.func.vmap(lambda h, b: train.loss({**trunk, **h}, b), in_dims=(0, 0))(hs, batch).mean()

    grad = torch.func.grad(loss, argnums=(0, 1))
    state: dict[str, Any] = {}
    names = list(trunk) + list(hs)
    tasks = torch.arange(len(train))
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="mtl", leave=False)
    for s in it:
        gt, gh = grad(trunk, hs, train.batch_fn(0, s + 1, tasks))
        # scale by T: each task's own loss gradient, as the task learners take it
        inner_update_([trunk[n] if n in trunk else hs[n] for n in names],
                      [gt[n] if n in gt else gh[n] * len(train) for n in names], state, cfg)
        if tick is not None:
            tick(1)
    return trunk


def _images_one(name: str, seed: int, cfg: CTSConfig, args, distributed: bool = False,
                tick: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    train_names = [s for s in args.cts_train.split(",") if s]
    test_names = [s for s in args.cts_test.split(",") if s]
    train = image_tasks(train_names, per_task=args.cts_per_task, seed=seed, data=args.data)
    test = image_tasks(test_names, per_task=args.cts_test_train, seed=seed + 1, data=args.data)
    model = _image_model(seed)
    train.model = test.model = model
    heads = ["head.weight", "head.bias"]
    rec: dict[str, Any] = {"seed": seed}
    t0 = time.perf_counter()
    progress = not args.no_progress
    if name == "scratch-init":
        trunk = {n: p.detach().clone() for n, p in model.named_parameters() if n not in heads}
    elif name == "mtl-pretrain":
        trunk = _mtl(train, model, cfg, cfg.inner_steps * cfg.repetitions, progress, tick)
    else:
        learner = META_LEARNERS[name][0](model, train.loss, len(train), cfg, heads=heads, distributed=distributed)
        losses = []
        guard = _guard(name, seed, args)

        def callback(tl, x):
            if tick is not None:
                tick(1)
            losses.append(float(x.mean()))
            guard.record(tl.inner_steps_done, loss=losses[-1])

        learner.run(train.batch_fn, callback, progress=progress and learner.rank == 0, desc=f"{name} seed {seed}")
        guard.check()
        trunk = learner.meta_parameters()
        rec.update(meta_steps=learner.meta_steps, inner_steps=learner.inner_steps_done,
                   train_loss=[float(np.mean(losses[i:i + 10])) for i in range(0, len(losses), 10)])
    rec["train_seconds"] = time.perf_counter() - t0
    accs = _fine_tune(trunk, test, cfg, _given(args.cts_test_steps, 100), seed)
    rec["test_acc"] = dict(zip(test_names, accs))
    rec["mean_acc"] = float(np.mean(accs))
    return rec


# ------------------------------------------------------------------------------ Fig. 3
def approximation_error_sweep(data: Optional[str] = None, draws: int = 3, progress: bool = True) -> dict[str, Any]:
    """``log10 ||eps||`` of Eq. 5 versus alpha, beta and k (Fig. 3), for an MLP 784-100-10 with
    ReLU and with Softplus on MNIST batches of 128, plain SGD, ``||Delta_i|| = beta`` in random
    directions (supp. C.4). Defaults when not swept: alpha 0.01, beta 0.01, k 25."""
    import torch.nn.functional as F

    from ..data import sources

    train, _ = sources.load_mnist(data)
    x_all = train.x.float().div(255).flatten(1)
    y_all = train.y
    sweeps = {"alpha": [0.001, 0.003, 0.01, 0.03, 0.1], "beta": [0.001, 0.003, 0.01, 0.03, 0.1],
              "k": [5, 10, 25, 50, 100]}
    base = {"alpha": 0.01, "beta": 0.01, "k": 25}
    out: dict[str, Any] = {"base": base, "sweeps": sweeps, "errors": {}}
    jobs = [(act, var, v) for act in ("relu", "softplus") for var, vals in sweeps.items() for v in vals]
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="approximation error", leave=False)
    for act, var, v in it:
        a = F.relu if act == "relu" else F.softplus
        loss = lambda p, b: F.cross_entropy(a(b[0] @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"], b[1])
        hp = dict(base, **{var: v})
        errs = []
        for d in range(draws):
            g = torch.Generator().manual_seed(d)
            phi = {"w1": torch.randn(100, 784, generator=g) / 28, "b1": torch.zeros(100),
                   "w2": torch.randn(10, 100, generator=g) / 10, "b2": torch.zeros(10)}
            batches = []
            for _ in range(hp["k"]):
                idx = torch.randint(len(y_all), (128,), generator=g)
                batches.append((x_all[idx], y_all[idx]))
            deltas = []
            for _ in range(hp["k"] - 1):
                dx = {n: torch.randn(p.shape, generator=g) for n, p in phi.items()}
                norm = torch.sqrt(sum((t ** 2).sum() for t in dx.values()))
                deltas.append({n: hp["beta"] * t / norm for n, t in dx.items()})
            errs.append(np.log10(max(approximation_error(loss, phi, batches, hp["alpha"], deltas), 1e-30)))
        out["errors"].setdefault(act, {}).setdefault(var, []).append([float(v), float(np.mean(errs)),
                                                                      float(np.std(errs))])
    return out


def _plot_error(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, var in zip(axes, ("alpha", "beta", "k")):
        for act, rows in res["errors"].items():
            r = np.asarray(rows[var])
            ax.errorbar(r[:, 0], r[:, 1], yerr=r[:, 2], marker="o", capsize=3, label=act)
        ax.set_xscale("log")
        ax.set_xlabel(var)
        ax.set_ylabel("log10 ||eps||")
        ax.legend()
    fig.suptitle("CTS approximation error (Eq. 5), MLP 784-100-10 on MNIST, SGD")
    fig.tight_layout()
    rundir.atomic_savefig(fig, out / "approx_error.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ entry
def _fingerprint(name: str, family: str, cfg: CTSConfig, args, seed: int, data_id: dict[str, Any]) -> dict[str, Any]:
    """What defines one (learner, seed) run of this family (stored with its record)."""
    if family == "synthetic2d":
        opts = dict(tasks=args.tasks or 8, cts_form=args.cts_form, cts_start=args.cts_start,
                    cts_eval_every=args.cts_eval_every, cts_coeffs=coeffs(args.cts_coeffs), cts_angles=args.cts_angles)
    else:
        opts = dict(cts_train=args.cts_train, cts_test=args.cts_test, cts_per_task=args.cts_per_task,
                    cts_test_train=args.cts_test_train, **data_id)
    return rundir.fingerprint(learner=name, family=family, config=asdict(cfg), seed=seed,
                              cts_test_steps=args.cts_test_steps or 100, **opts)


def _image_data_fields(args) -> dict[str, Any]:
    """The images family's data sources (MNIST, Fashion-MNIST) and their digests, by source."""
    names = [n for n in f"{args.cts_train},{args.cts_test}".split(",") if n in IMAGE_TASKS]
    return {src: rundir.data_fields("mnist", args.data if src == "mnist" else "fashion-mnist")
            for src in sorted({IMAGE_TASKS[n][0] for n in names})}


@rundir.releases_run_dirs
def run_from_args(args, learners: Sequence[str]) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    open_out = partial(rundir.open_run_dir, args.out, learners=learners, resume=args.resume, overwrite=args.overwrite)
    if "cts-error" in learners:
        if len(learners) > 1:
            raise ValueError("cts-error runs alone")
        out = open_out(what="mnist")
        res = approximation_error_sweep(args.data, draws=max(1, args.seeds if args.seeds > 1 else 3),
                                        progress=not args.no_progress)
        rundir.atomic_write_json(out / "approx_error.json", res)
        for act, sw in res["errors"].items():
            for var, rows in sw.items():
                print(f"{act:8s} {var:5s} " + "  ".join(f"{v:g}:{m:.2f}" for v, m, _ in rows))
        if not args.no_plots:
            _plot_error(res, out)
        print(f"results written to {out}/approx_error.json" + ("" if args.no_plots else ", approx_error.png"))
        return 0
    family = args.family or "synthetic2d"
    if family not in FAMILIES:
        raise ValueError(f"--family must be one of {', '.join(FAMILIES)} for {', '.join(learners)}, got {family!r}")
    if family == "synthetic2d" and any(n in ("mtl-pretrain", "scratch-init") for n in learners):
        raise ValueError("mtl-pretrain and scratch-init are baselines of the images family")
    from ..distributed import init_from_env

    rank, world = init_from_env()  # under torchrun: every rank runs its shard, rank 0 writes
    if world > 1 and args.nproc > 1:
        raise ValueError("--nproc cannot be used under torchrun, which starts the processes itself")
    overrides = _overrides(args.overrides)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    data_id = _image_data_fields(args) if family == "images" else {}
    # rank 0 writes; the other ranks only read the records, with --resume (which needs --out)
    out = open_out(what=family) if rank == 0 else Path(args.out or ".")
    results: dict[str, Any] = {"family": family, "seeds": seeds, "learners": {}}
    configs = {name: _config(name, family, args, overrides) for name in learners}
    finished = 0
    for name, seed in [(n, s) for n in learners for s in seeds if args.resume]:  # damaged / foreign: refused first
        ckpt = out / f"{name}-seed{seed}.json"
        if ckpt.exists():
            rundir.load_json_checkpoint(ckpt, _fingerprint(name, family, configs[name], args, seed, data_id))
            finished += 1
    if args.resume and rank == 0:
        print(_resume_line(finished, len(learners) * len(seeds), out))
    # one bar over every inner step of every (learner, seed, start), with its ETA, beside the run's own
    overall = overall_bar(sum(steps_of_run(family, n, configs[n], args) for n in learners) * len(seeds), unit="step",
                          progress=not args.no_progress and rank == 0)
    try:
        for name in learners:
            cfg = configs[name]
            runs = []
            for seed in seeds:
                ckpt = out / f"{name}-seed{seed}.json"
                fp = _fingerprint(name, family, cfg, args, seed, data_id)
                overall.set_description(f"overall, {name} seed {seed}")
                if args.resume and ckpt.exists():
                    runs.append(rundir.load_json_checkpoint(ckpt, fp))
                    overall.update(steps_of_run(family, name, cfg, args))
                    if rank == 0:
                        print(f"{name} seed {seed}: finished run reused ({ckpt})")
                    continue
                rec = _run_one(family, name, seed, cfg, args, out, tick=overall.update)
                if rank == 0:
                    rundir.save_json_checkpoint(ckpt, rec, fp)
                runs.append(rec)
            r: dict[str, Any] = {"config": asdict(cfg), "runs": runs}
            keys = ("final_adam", "final_momentum") if family == "synthetic2d" else ("mean_acc",)
            for key in keys + ("train_seconds",):
                r[key] = _mean_std([x[key] for x in runs])
            results["learners"][name] = r
    finally:
        overall.close()
    if rank != 0:
        return 0
    rundir.atomic_write_json(out / "results.json", results)
    if family == "synthetic2d":
        rows = [["learner", "seed", "meta_test_adam", "meta_test_momentum", "meta_steps", "inner_steps",
                 "train_seconds"]]
        rows += [[name, x["seed"], x["final_adam"], x["final_momentum"], x["meta_steps"], x["inner_steps"],
                  x["train_seconds"]] for name, r in results["learners"].items() for x in r["runs"]]
    else:
        test_names = list(results["learners"][learners[0]]["runs"][0]["test_acc"])
        rows = [["learner", "seed", *test_names, "mean_acc", "train_seconds"]]
        rows += [[name, x["seed"], *[x["test_acc"][t] for t in test_names], x["mean_acc"], x["train_seconds"]]
                 for name, r in results["learners"].items() for x in r["runs"]]
    rundir.atomic_write_csv(out / "results.csv", rows)
    print(summary_table(results))
    if family == "synthetic2d":
        print("\nmeta-test loss (Adam) at equal cumulative inner steps per task\n")
        print(equal_steps_table(results))
    if not args.no_plots:
        if family == "synthetic2d":
            _plot_synthetic(results, args, out)
        else:
            _plot_images(results, out)
    plots = "" if args.no_plots else (", trajectories.png, metatest.png" if family == "synthetic2d" else ", accuracy.png")
    print(f"results written to {out}/results.json, results.csv, the per-seed records{plots}")
    return 0


def _resume_line(finished: int, total: int, out: Path) -> str:
    """What a resumed run of this family prints first: how many of its (learner, seed) runs the
    directory already holds (this family keeps finished runs only: the others start over)."""
    if finished == total:
        return f"all {total} runs already done ({out})"
    return (f"resuming: {finished} of {total} (learner, seed) runs already finished in {out}; the other "
            f"{total - finished} start from the beginning (this family keeps finished runs only)")


def summary_table(results: dict[str, Any]) -> str:
    """Markdown table, mean (std) over seeds."""
    fmt = lambda ms, s=1.0, d=4: f"{ms[0] * s:.{d}g} ({ms[1] * s:.{d}g})"
    if results["family"] == "synthetic2d":
        lines = ["| learner | meta-test loss (Adam) | meta-test loss (SGD-momentum) | meta steps | inner steps/task | seconds |",
                 "|---|---|---|---|---|---|"]
        for n, r in results["learners"].items():
            x = r["runs"][0]
            lines.append(f"| {n} | {fmt(r['final_adam'])} | {fmt(r['final_momentum'])} | {x['meta_steps']} | "
                         f"{x['inner_steps']} | {r['train_seconds'][0]:.2f} |")
    else:
        lines = ["| learner | meta-test accuracy (%) | meta-train seconds |", "|---|---|---|"]
        for n, r in results["learners"].items():
            lines.append(f"| {n} | {fmt(r['mean_acc'], 100, 3)} | {r['train_seconds'][0]:.1f} |")
    return "\n".join(lines)


def equal_steps_table(results: dict[str, Any], steps: Sequence[int] = (10, 30, 100, 200, 300)) -> str:
    """Synthetic family: the Adam meta-test loss of each learner at equal cumulative inner steps
    per task (the last evaluation at or before each budget), mean (std) over seeds."""
    head = "| learner | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [head, "|---" * (len(steps) + 1) + "|"]
    for n, r in results["learners"].items():
        cells = []
        for budget in steps:
            vals = []
            for x in r["runs"]:
                i = max(j for j, c in enumerate(x["cum_steps"]) if c <= budget)
                vals.append(x["test_adam"][i])
            m, sd = _mean_std(vals)
            cells.append(f"{m:.3g} ({sd:.3g})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_images(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(results["learners"])
    means = [results["learners"][n]["mean_acc"][0] * 100 for n in names]
    stds = [results["learners"][n]["mean_acc"][1] * 100 for n in names]
    ax.bar(names, means, yerr=stds, capsize=4)
    ax.set_ylabel("held-out fine-tuning accuracy (%)")
    ax.set_ylim(min(means) - 10, min(100, max(means) + 5))
    fig.tight_layout()
    rundir.atomic_savefig(fig, out / "accuracy.png", dpi=110)
    plt.close(fig)
