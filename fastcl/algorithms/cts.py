"""Continual Trajectory Shifting (CTS, Shin et al. 2021, Algorithm 2), its accurate variant and the
shared engine of T task learners stepping together under ``torch.func.vmap``.

The T task learners keep their parameters stacked (``theta[name]`` has shape ``[T, *S]``); one
inner step of all of them is one ``vmap(loss)`` forward (``functional_call`` inside ``loss_fn``),
one backward for the T per-task gradients and one batched optimizer update on the stacked
tensors. The Reptile meta step and the shift of every trajectory are one call of the
fused :func:`fastcl.ops.trajectory_shift_`.

Tasks are given as a per-task loss ``loss_fn(params, batch) -> scalar`` (``params`` a dict of one
task's tensors, ``batch`` one task's slice of a pytree whose leaves have a leading ``[T]`` dim)
and a data function ``batch_fn(m, k, tasks) -> batch``: the batch of the k-th inner step
(1-based) of repetition m for the global task ids ``tasks`` (``[T_local]`` int64). ``batch_fn``
must be a pure function of its arguments: CTS-Accurate replays steps 1..k, and the distributed
run asks each rank for its own tasks only.

Distributed: with ``torch.distributed`` initialised and ``world_size > 1``, rank r holds the
contiguous shard of tasks ``shard(T, r, world)``; the meta step sums the shard's task parameters,
forms the mean over all T with ONE all-reduce of one flat buffer, and every rank applies the same
meta step and shift, so the result equals the single-process run within float tolerance.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import ops
from ..optim.functional import INNER_OPTIMIZERS, inner_step_

__all__ = ["CTSConfig", "CTS", "CTSAccurate", "TaskLearners", "OPTIMIZERS", "shard", "inner_update_",
           "approximation_error"]

OPTIMIZERS = INNER_OPTIMIZERS


@dataclass
class CTSConfig:
    """Hyperparameters of CTS / Reptile (defaults: the paper's synthetic experiment, Sec. 4.1).

    Attributes:
        inner_lr: alpha, the inner (task) learning rate.
        meta_lr: beta, the meta learning rate (Reptile step ``phi += beta * mean(theta - phi)``).
        inner_steps: K, the length of every inner trajectory.
        repetitions: M, how many times the inner trajectories restart from phi.
        optimizer: inner optimizer, ``"sgd"``, ``"momentum"`` (heavy ball, PyTorch's form
            ``b = mu b + g; theta -= alpha b``) or ``"adam"``; its state is per task (stacked).
        momentum: mu of ``"momentum"``.
        betas: (beta1, beta2) of ``"adam"``.
        eps: epsilon of ``"adam"``.
        weight_decay: lambda, added to the inner gradient (``g + lambda theta``).
        shift: CTS shifts every trajectory by the meta step (Alg. 2, l. 13); ``False`` is the
            "No Shifting" ablation (Fig. 8): still a meta step after *every* inner step, so it is
            not Reptile (one meta step per K inner steps, Alg. 1) unless K = 1. Ignored by Reptile
            and CTS-Accurate.
        reset_optimizer: zero the optimizer state when the task learners restart from phi
            (every repetition). Default True: the authors' synthetic code
            (``synthetic/algorithm.py``) creates new inner optimizers at every repetition.
            ``False`` keeps the momentum / Adam moments across repetitions, as supp. C.2 and the
            authors' image code (``hard_reset=False``) do for the image experiments (the
            ``images`` family of ``fastcl run`` sets it). Heads are never reset.

    The engine draws nothing itself (``batch_fn`` samples the data), so it takes no seed.
    """

    inner_lr: float = 0.05
    meta_lr: float = 0.1
    inner_steps: int = 100
    repetitions: int = 3
    optimizer: str = "momentum"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    shift: bool = True
    reset_optimizer: bool = True

    def __post_init__(self):
        for name in ("inner_lr", "meta_lr", "momentum", "eps", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("inner_steps", "repetitions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        b = tuple(self.betas)
        if len(b) != 2 or not all(0 <= x < 1 for x in b):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(b[0]), float(b[1]))


def shard(num_tasks: int, rank: int, world: int) -> range:
    """The contiguous block of task ids rank ``rank`` of ``world`` holds (sizes differ by <= 1)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank {rank}, world {world}")
    if num_tasks < world:
        raise ValueError(f"num_tasks ({num_tasks}) must be >= the number of processes ({world})")
    base, extra = divmod(num_tasks, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def inner_update_(params: list[Tensor], grads: list[Tensor], state: dict[str, Any], cfg: CTSConfig) -> None:
    """One inner optimizer step of ``cfg`` (optimizer, inner_lr, momentum, betas, eps, weight_decay)
    on (stacked) parameters, in place: :func:`fastcl.optim.functional.inner_step_`."""
    inner_step_(params, grads, state, cfg.optimizer, cfg.inner_lr, momentum=cfg.momentum, betas=cfg.betas,
                eps=cfg.eps, weight_decay=cfg.weight_decay)


def _named_tensors(params) -> dict[str, Tensor]:
    if isinstance(params, nn.Module):
        return {n: p.detach().clone() for n, p in params.named_parameters() if p.requires_grad}
    if isinstance(params, Mapping):
        out = {}
        for n, p in params.items():
            if not isinstance(p, Tensor) or not p.is_floating_point():
                raise TypeError(f"params[{n!r}] must be a floating tensor, got {type(p).__name__}")
            out[str(n)] = p.detach().clone()
        if not out:
            raise ValueError("params must hold at least one tensor")
        return out
    raise TypeError(f"params must be an nn.Module or a dict of tensors, got {type(params).__name__}")


def _dist_world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TaskLearners:
    """T task learners stacked, stepping under ``vmap``; the engine of Reptile, CTS and CTS-Accurate.

    Args:
        params: the initial meta parameters phi (an ``nn.Module``'s parameters or a dict of
            tensors); heads included: they seed every task's head.
        loss_fn: ``loss_fn(params, batch) -> scalar``, one task's loss (see the module docstring).
        num_tasks: T, the number of task learners over all processes.
        config: a :class:`CTSConfig`.
        heads: names of task-specific parameters: part of theta (one per task, never reset from
            phi, never shifted), excluded from phi, as the authors do with classification heads.
        distributed: shard the tasks over the processes of the initialised default
            ``torch.distributed`` group (``None``: when one is initialised with world size > 1).
    """

    kind = "cts"

    def __init__(self, params, loss_fn: Callable[[dict, Any], Tensor], num_tasks: int,
                 config: Optional[CTSConfig] = None, heads: Iterable[str] = (), distributed: Optional[bool] = None):
        self.config = config if config is not None else CTSConfig()
        if not isinstance(self.config, CTSConfig):
            raise TypeError(f"config must be a CTSConfig, got {type(self.config).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable")
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        init = _named_tensors(params)
        heads = [str(h) for h in heads]
        for h in heads:
            if h not in init:
                raise ValueError(f"head {h!r} is not a parameter name; names: {', '.join(init)}")
        self.names = list(init)
        self.head_names = [n for n in self.names if n in heads]
        self.shared_names = [n for n in self.names if n not in heads]
        if not self.shared_names:
            raise ValueError("every parameter is a head: phi would be empty")
        rank, world = _dist_world()
        if distributed is None:
            distributed = world > 1
        self.rank, self.world = (rank, world) if distributed else (0, 1)
        self.num_tasks = num_tasks
        self.tasks = torch.tensor(list(shard(num_tasks, self.rank, self.world)), dtype=torch.int64)
        t_local = len(self.tasks)
        self.loss_fn = loss_fn
        self.phi = {n: init[n] for n in self.shared_names}
        self.theta = {n: init[n].unsqueeze(0).repeat(t_local, *([1] * init[n].dim())) for n in self.names}
        self.opt_state: dict[str, Any] = {}
        self.m = 0  # repetition in progress (0-based)
        self.k = 0  # inner steps done in repetition m
        self.meta_steps = 0
        self.inner_steps_done = 0  # cumulative inner steps per task (all replays included)
        self._snapshot = None  # CTS-Accurate: heads and optimizer state at the start of repetition m
        # the T losses in one vmapped forward; their per-task gradients in one backward of their
        # sum (tasks share no parameter, so d sum / d theta_t = d L_t / d theta_t): about 2x
        # faster than vmap(grad(loss)) for small models, the same numbers
        self._losses = torch.func.vmap(self._loss)

    def _loss(self, params, batch):
        return self.loss_fn(params, batch)

    def _check_batch(self, batch) -> None:
        """``batch`` holds tensors stacked over the local task learners: leading dimension T_local."""
        t_local = len(self.tasks)
        leaves = [x for x in torch.utils._pytree.tree_leaves(batch) if isinstance(x, Tensor)]
        if not leaves:
            raise ValueError("batch_fn(m, k, tasks) must return tensors (or a tuple / list / dict of them), got "
                             f"{type(batch).__name__}")
        for x in leaves:
            if x.dim() == 0 or x.shape[0] != t_local:
                raise ValueError(f"batch_fn(m, k, tasks) must return tensors stacked over the {t_local} task "
                                 f"learners of `tasks` (leading dimension {t_local}), got a tensor of shape "
                                 f"{tuple(x.shape)}")

    def task_gradients(self, batch) -> tuple[dict[str, Tensor], Tensor]:
        """Per-task gradients (stacked like ``theta``) and the ``[T_local]`` losses at ``theta``."""
        self._check_batch(batch)
        leaves = {n: t.detach().requires_grad_(True) for n, t in self.theta.items()}
        with torch.enable_grad():
            losses = self._losses(leaves, batch)
            if losses.shape != (len(self.tasks),):
                raise ValueError(f"loss_fn must return a scalar per task, got shape {tuple(losses.shape[1:])}")
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()), allow_unused=True)
        grads = {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(leaves, grads)}
        return grads, losses.detach()

    # -- pieces of the algorithms ----------------------------------------------------
    @property
    def phi_list(self) -> list[Tensor]:
        return [self.phi[n] for n in self.shared_names]

    @property
    def theta_shared(self) -> list[Tensor]:
        return [self.theta[n] for n in self.shared_names]

    def reset(self) -> None:
        """theta_0 <- phi for every task (Alg. 1 l. 7, Alg. 2 l. 6); heads and, unless
        ``reset_optimizer``, the optimizer state carry over."""
        self._shared_from_phi()
        if self.config.reset_optimizer:
            self.opt_state = {}

    @torch.no_grad()
    def _shared_from_phi(self) -> None:
        """Every task learner's shared parameters <- phi."""
        for n in self.shared_names:
            self.theta[n].copy_(self.phi[n].unsqueeze(0).expand_as(self.theta[n]))

    def inner_step(self, batch) -> Tensor:
        """One optimizer step of all local task learners on ``batch``; returns the ``[T_local]``
        losses before the step (Alg. 1 l. 9, Alg. 2 l. 9)."""
        grads, losses = self.task_gradients(batch)
        inner_update_([self.theta[n] for n in self.names], [grads[n] for n in self.names], self.opt_state,
                      self.config)
        self.inner_steps_done += 1
        return losses

    def meta_step(self, shift: bool) -> None:
        """``Delta = beta * mean_t(theta_t - phi)``; ``phi += Delta``; with ``shift`` every
        ``theta_t += Delta`` (Alg. 2 l. 11-13; ``shift=False``: Alg. 1 l. 12). Heads are neither.
        Distributed: one all-reduce of the flat per-rank sums; every rank applies the same Delta."""
        beta = float(self.config.meta_lr)
        phi, thetas = self.phi_list, self.theta_shared
        if self.world == 1:
            ops.trajectory_shift_(phi, thetas, beta, shift)
        else:
            import torch.distributed as dist

            flat = torch.cat([th.sum(0).reshape(-1) for th in thetas])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.num_tasks)
            means = [m.view_as(p).unsqueeze(0) for m, p in zip(flat.split([p.numel() for p in phi]), phi)]
            old = [p.clone() for p in phi]
            # the same fused op forms phi += beta (mean - phi), identically on every rank
            ops.trajectory_shift_(phi, means, beta, False)
            if shift:
                delta = torch._foreach_sub(phi, old)
                torch._foreach_add_(thetas, [d.unsqueeze(0) for d in delta])
        self.meta_steps += 1

    # -- one step of the algorithm -----------------------------------------------------
    def step(self, batch_fn: Callable[[int, int, Tensor], Any]) -> Tensor:
        """Advance the algorithm by one inner step of every task learner (with the meta steps
        the algorithm makes there); returns the ``[T_local]`` losses of that step."""
        cfg = self.config
        if self.m >= cfg.repetitions:
            raise RuntimeError("the run is over: all M repetitions are done")
        if self.k == 0:
            self._begin_repetition()
        self.k += 1
        losses = self._advance(batch_fn)
        if self.k == cfg.inner_steps:
            self.m, self.k = self.m + 1, 0
        return losses

    def _begin_repetition(self) -> None:
        self.reset()

    def _advance(self, batch_fn) -> Tensor:
        """Inner step ``k`` of repetition ``m`` and the meta steps that follow it."""
        losses = self.inner_step(batch_fn(self.m, self.k, self.tasks))
        self._after_inner_step()
        return losses

    def _after_inner_step(self) -> None:
        self.meta_step(shift=self.config.shift)

    @property
    def done(self) -> bool:
        return self.m >= self.config.repetitions

    def run(self, batch_fn, callback: Optional[Callable[["TaskLearners", Tensor], None]] = None,
            progress: bool = False, desc: Optional[str] = None) -> None:
        """Run the remaining steps of all M repetitions (resumes where a loaded state stopped);
        ``callback(self, losses)`` after each step."""
        total = self.config.repetitions * self.config.inner_steps
        done = self.m * self.config.inner_steps + self.k
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=done, desc=desc or self.kind, leave=False)
        while not self.done:
            losses = self.step(batch_fn)
            if callback is not None:
                callback(self, losses)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

    # -- results ---------------------------------------------------------------------
    def meta_parameters(self) -> dict[str, Tensor]:
        """phi (the shared parameters), detached copies."""
        return {n: p.detach().clone() for n, p in self.phi.items()}

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": asdict(self.config),
            "num_tasks": self.num_tasks,
            "tasks": self.tasks.clone(),
            "phi": {n: p.clone() for n, p in self.phi.items()},
            "theta": {n: p.clone() for n, p in self.theta.items()},
            "opt_state": copy.deepcopy(self.opt_state),
            "snapshot": copy.deepcopy(self._snapshot),
            "m": self.m, "k": self.k, "meta_steps": self.meta_steps, "inner_steps_done": self.inner_steps_done,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is of a {state.get('kind')!r} learner, not {self.kind!r}")
        if int(state["num_tasks"]) != self.num_tasks or not torch.equal(state["tasks"], self.tasks):
            raise ValueError("state holds other tasks (num_tasks or this rank's shard differ)")
        if set(state["theta"]) != set(self.names):
            raise ValueError("state holds other parameter names")
        with torch.no_grad():
            for n in self.shared_names:
                self.phi[n].copy_(state["phi"][n])
            for n in self.names:
                self.theta[n].copy_(state["theta"][n])
        self.opt_state = copy.deepcopy(state["opt_state"])
        self._snapshot = copy.deepcopy(state["snapshot"])
        self.m, self.k = int(state["m"]), int(state["k"])
        self.meta_steps, self.inner_steps_done = int(state["meta_steps"]), int(state["inner_steps_done"])


class CTS(TaskLearners):
    """Continual Trajectory Shifting (Algorithm 2): after every inner step of all T task learners,
    the Reptile meta step on phi and the same shift of every trajectory
    (``trajectory_shift_``), so within each of the M repetitions the trajectory length behind
    the meta step grows 1..K. ``config.shift=False`` is the "No Shifting" ablation (Fig. 8).

    Only parameters are shifted: the optimizer state (momentum buffers, Adam moments) is not,
    as in the authors' code; the heads are neither reset nor shifted. See :class:`TaskLearners`
    for the arguments.
    """

    kind = "cts"


class CTSAccurate(TaskLearners):
    """The paper's "Ours Accurate": the k-th meta step uses the exact ``U_k(phi + Delta_1 + ... +
    Delta_{k-1})`` (the inner trajectory recomputed from the current phi with steps 1..k of this
    repetition's batches, the optimizer state and heads restored to those at the start of the
    repetition), with no shift: the reference of Eq. 5's approximation. O(K^2) inner steps per
    repetition; the same number of meta steps as CTS.
    """

    kind = "cts-accurate"

    def _begin_repetition(self) -> None:
        if self.config.reset_optimizer:
            self.opt_state = {}
        self._snapshot = {"heads": {n: self.theta[n].clone() for n in self.head_names},
                          "opt_state": copy.deepcopy(self.opt_state)}

    def _advance(self, batch_fn) -> Tensor:
        # restart from the current phi with the repetition's starting heads and optimizer state
        self._shared_from_phi()
        with torch.no_grad():
            for n in self.head_names:
                self.theta[n].copy_(self._snapshot["heads"][n])
        self.opt_state = copy.deepcopy(self._snapshot["opt_state"])
        for i in range(1, self.k + 1):
            losses = self.inner_step(batch_fn(self.m, i, self.tasks))
        self.meta_step(shift=False)
        return losses


def approximation_error(loss_fn: Callable[[dict, Any], Tensor], phi: Mapping[str, Tensor], batches: Sequence[Any],
                        alpha: float, deltas: Sequence[Mapping[str, Tensor]]) -> float:
    """``||eps||_2`` of Eq. 5 (supp. Eq. 2) with plain SGD for one task:
    ``eps = U_k(phi + Delta_1 + ... + Delta_{k-1}) - U_1(... U_1(U_1(phi) + Delta_1) ... + Delta_{k-1})``.

    Args:
        loss_fn: one task's loss ``loss_fn(params, batch)``.
        phi: the initialization.
        batches: the k batches of steps 1..k (``L_0 .. L_{k-1}``).
        alpha: inner learning rate.
        deltas: the k-1 meta steps Delta_1 .. Delta_{k-1} (dicts like ``phi``).
    """
    k = len(batches)
    if k < 1 or len(deltas) != k - 1:
        raise ValueError(f"need k >= 1 batches and k-1 deltas, got {k} batches and {len(deltas)} deltas")
    g = torch.func.grad(loss_fn)

    def sgd(p, batch):
        gr = g(p, batch)
        return {n: p[n] - alpha * gr[n] for n in p}

    exact = {n: phi[n] + sum(d[n] for d in deltas) if deltas else phi[n].clone() for n in phi}
    for b in batches:
        exact = sgd(exact, b)
    chained = {n: t.clone() for n, t in phi.items()}
    for i, b in enumerate(batches):
        chained = sgd(chained, b)
        if i < k - 1:
            chained = {n: chained[n] + deltas[i][n] for n in chained}
    err = torch.cat([(exact[n] - chained[n]).reshape(-1) for n in phi])
    return float(err.norm())
