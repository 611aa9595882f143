"""Online meta-learning: FTML (Finn, Rajeswaran, Kakade, Levine, ICML 2019) and its baselines.

The online protocol (Alg. 1): tasks arrive one after the other; the data of task ``t`` arrive in
batches that are appended to ``D_t`` in the :class:`~fastcl.memory.TaskBuffer` ``B`` (every
example ever seen is kept). After each arrival the learner trains (:meth:`OnlineLearner.observe`);
to be evaluated on task ``t`` it is first adapted on all of ``D_t``
(:meth:`OnlineLearner.adapt`, the Update-Procedure) and then tested on held-out data.

* :class:`FTML`, follow the meta leader (Alg. 2): after each arrival, ``N_meta`` meta-updates,
  each sampling a task ``k`` uniformly from ``B`` and independent minibatches ``D_k^tr``,
  ``D_k^val``, computing ``g = grad_w L(D_k^val, U_k(w))`` with ``U_k`` = ``S`` SGD steps of step
  size ``alpha`` on ``D_k^tr`` (Eq. 5, several steps as in Sec. 5), and applying it with Adam.
  Update-Procedure: ``N_grad`` gradient steps of size ``alpha`` on all of ``D_t``.
* :class:`TrainOnEverything` (TOE): one model trained jointly on all the data so far (``D_t``
  included), evaluated without adaptation.
* :class:`FollowTheLeader` (FTL with fine-tuning): joint training on the tasks before the current
  one, then the Update-Procedure on ``D_t``.
* :class:`FromScratch`: the paper's "train from scratch" (Sec. 6): a fresh random
  initialisation for every task, fine-tuned on ``D_t`` only by the Update-Procedure (no training
  steps on arrival). :class:`FromScratchAdam` (``scratch-adam``) also gives the fresh net the
  ``N_meta`` Adam steps per arrival on ``D_t`` (fastcl's earlier reading).

The inner adaptation is :func:`sgd_adapt`, written with ``torch.func`` (``functional_call`` and
``grad``); the meta-gradient is ``torch.autograd.grad`` through it (second order;
``first_order=True`` detaches the inner gradients, which drops the Hessian terms, FOMAML). With
``meta_batch > 1`` the tasks of a meta-update run together under ``torch.func.vmap``. (Taking the
outer gradient with ``torch.func.grad`` as well gives the same numbers but cost about 25% more
CPU time per meta-update here.) Models should be BatchNorm-free (:class:`fastcl.models.ConvNet`):
buffers are passed through ``functional_call`` unchanged, and running-statistics updates are not
allowed under ``vmap``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..memory import TaskBuffer
from ..memory._checks import check_batch
from .base import resolve_seed

__all__ = ["FTMLConfig", "OnlineLearner", "FTML", "TrainOnEverything", "FollowTheLeader", "FromScratch",
           "FromScratchAdam", "sgd_adapt", "ONLINE_LEARNERS"]

Params = dict[str, Tensor]


@dataclass
class FTMLConfig:
    """Hyperparameters of FTML and of its baselines (Finn et al., 2019, Sec. 5 and App. C).

    Attributes:
        inner_lr: alpha, step size of the inner SGD steps ``U_k`` and of the Update-Procedure (0.1).
        inner_steps: gradient steps of ``U_k`` (5).
        inner_batch: examples in each of ``D_k^tr`` and ``D_k^val`` (10 on MNIST); the joint
            training of TOE / FTL draws ``2 * inner_batch`` examples per task so that every method
            sees as many examples per update.
        meta_lr: eta, Adam step size of the meta-update (Adam's default 1e-3).
        meta_steps: N_meta, meta-updates (TOE / FTL / ``scratch-adam``: Adam steps) after each
            arrival of data. The paper does not give it; 100 is this library's default.
        meta_batch: tasks per meta-update (1: Alg. 2 samples one task; more run under vmap).
        finetune_steps: N_grad, steps of the Update-Procedure on ``D_t``. The paper does not give
            it; the default is the number of inner steps the meta-training prepares for (5): with
            20 steps of alpha = 0.1 the fine-tuning diverged on some Rainbow MNIST tasks (11% test
            accuracy after 900 datapoints).
        finetune_batch: examples per Update-Procedure step; None uses all of ``D_t`` (Alg. 2,
            line 14), an int draws that many examples per step (cheaper on large ``D_t``).
        first_order: drop the second-order terms of the meta-gradient (FOMAML).
        label_smoothing: epsilon of the label-smoothed cross entropy, inner and outer (0.1).
        seed: seed of the learner's generator (task and minibatch sampling, re-initialisation);
            ``None`` (default): drawn from torch's global generator when the learner is built.
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    inner_batch: int = 10
    meta_lr: float = 1e-3
    meta_steps: int = 100
    meta_batch: int = 1
    finetune_steps: int = 5
    finetune_batch: Optional[int] = None
    first_order: bool = False
    label_smoothing: float = 0.1
    seed: Optional[int] = None

    def __post_init__(self):
        for name in ("inner_lr", "meta_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name, low in (("inner_steps", 0), ("inner_batch", 1), ("meta_steps", 0), ("meta_batch", 1),
                          ("finetune_steps", 0), ("seed", 0)):
            v = getattr(self, name)
            if name == "seed" and v is None:  # drawn from torch's generator when the learner is built
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.finetune_batch is not None and (isinstance(self.finetune_batch, bool)
                                                or not isinstance(self.finetune_batch, int) or self.finetune_batch < 1):
            raise ValueError(f"finetune_batch must be None or an int >= 1, got {self.finetune_batch!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")


def _loss(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor, label_smoothing: float) -> Tensor:
    return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y, label_smoothing=label_smoothing)


def sgd_adapt(model: nn.Module, params: Params, x: Tensor, y: Tensor, *, lr: float, steps: int,
              label_smoothing: float = 0.0, first_order: bool = False, buffers: Optional[Params] = None) -> Params:
    """``U(w)``: ``steps`` plain SGD steps on ``L(D, w)`` from ``params`` (FTML Eq. 5, Alg. 2 l. 14).

    ``w <- w - lr * grad_w L((x, y), w)``, repeated ``steps`` times on the same data, with ``L``
    the (label-smoothed) cross entropy of ``functional_call(model, w, x)``. The result is a
    differentiable function of ``params`` (under ``torch.func.grad`` / ``vmap`` too): the
    meta-gradient through it is second order; ``first_order=True`` detaches each inner gradient,
    which drops the Hessian terms.

    Args:
        model: the network (its own parameters are not used or changed).
        params: name -> tensor, the starting point ``w``.
        x: ``[B, *input_shape]`` inputs; y: ``[B]`` int64 labels.
        lr: alpha. steps: number of steps (0 returns ``params``).
        label_smoothing: epsilon of the cross entropy.
        first_order: detach the inner gradients.
        buffers: the model's buffers (default: its current ones).

    Returns:
        The adapted parameters, name -> tensor.
    """
    buffers = dict(model.named_buffers()) if buffers is None else buffers
    step_grad = grad(_loss, argnums=1)
    for _ in range(steps):
        g = step_grad(model, params, buffers, x, y, label_smoothing)
        params = {k: p - lr * (g[k].detach() if first_order else g[k]) for k, p in params.items()}
    return params


class OnlineLearner:
    """What FTML and its baselines share: the task buffer, Adam on the model, Update-Procedure.

    Protocol: ``observe(x, y, task)`` after each arrival (appends to ``D_task``, then trains;
    ``task`` never decreases), ``adapt(task)`` -> the parameters used to evaluate ``task``,
    ``predict(x, task)`` -> logits with them, ``state_dict()`` / ``load_state_dict()``.

    Args:
        model: the network, trained in place (BatchNorm-free; see the module docstring).
        input_shape: shape of one example, e.g. ``(3, 28, 28)``.
        config: :class:`FTMLConfig`.
    """

    #: whether evaluation first runs the Update-Procedure on ``D_t``.
    fine_tunes = True

    def __init__(self, model: nn.Module, input_shape, config: Optional[FTMLConfig] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else FTMLConfig()
        if not isinstance(self.config, FTMLConfig):
            raise TypeError(f"config must be an FTMLConfig, got {type(self.config).__name__}")
        p = next(model.parameters())
        self.buffer = TaskBuffer(input_shape, dtype=p.dtype, device=p.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.config.meta_lr)
        #: the seed in use: ``config.seed``, or one drawn from torch's generator (config.seed None)
        self.seed = resolve_seed(self.config.seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.current_task: Optional[int] = None
        self.updates = 0
        self._adapted: dict[int, Params] = {}

    # ------------------------------------------------------------------ protocol
    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        """Append a batch to ``D_task`` and train after it; returns the mean training loss (nan if none).

        Args:
            x: ``[B, *input_shape]`` inputs (dtype and device of the model); y: ``[B]`` int64.
            task: task id; never smaller than the previous one.
        """
        check_batch(x, y, self.buffer.example_shape, self.buffer.dtype, self.buffer.device)
        if isinstance(task, bool) or not isinstance(task, int) or task < 0:
            raise ValueError(f"task must be an int >= 0, got {task!r}")
        if self.current_task is not None and task < self.current_task:
            raise ValueError(f"task {task} arrived after task {self.current_task}: tasks never go back")
        if task != self.current_task:
            self._start_task(task)
        self.current_task = task
        self.buffer.add(x, y, task)
        self._adapted.clear()
        self.model.train()
        losses = [self._update(task) for _ in range(self.config.meta_steps)]
        losses = [v for v in losses if v is not None]
        return float(sum(losses) / len(losses)) if losses else float("nan")

    def _start_task(self, task: int) -> None:
        """Hook run when a new task begins."""

    def _update(self, task: int) -> Optional[float]:
        """One training update after an arrival (a meta-update or a joint step); its loss."""
        raise NotImplementedError

    def _params(self) -> Params:
        return {k: v.detach() for k, v in self.model.named_parameters()}

    def adapt(self, task: int) -> Params:
        """The parameters that evaluate ``task``: Update-Procedure(w, D_task) (Alg. 2, l. 11-16).

        ``finetune_steps`` SGD steps of size alpha on all of ``D_task`` (or minibatches of
        ``finetune_batch``, drawn by a generator seeded from (seed, task, |D_task|), so the result
        does not depend on when it was asked for). Cached until the next :meth:`observe`.
        """
        if task in self._adapted:
            return self._adapted[task]
        params = self._params()
        if self.fine_tunes:
            cfg = self.config
            x, y = self.buffer.data(task)
            gen = torch.Generator().manual_seed(hash((self.seed, task, x.shape[0])) & (2**62 - 1))
            for _ in range(cfg.finetune_steps):
                if cfg.finetune_batch is not None and cfg.finetune_batch < x.shape[0]:
                    idx = torch.randperm(x.shape[0], generator=gen)[: cfg.finetune_batch].to(x.device)
                    xb, yb = x[idx], y[idx]
                else:
                    xb, yb = x, y
                params = sgd_adapt(self.model, params, xb, yb, lr=cfg.inner_lr, steps=1,
                                   label_smoothing=cfg.label_smoothing)
        self._adapted[task] = {k: v.detach() for k, v in params.items()}
        return self._adapted[task]

    @torch.no_grad()
    def predict(self, x: Tensor, task: int) -> Tensor:
        """Logits ``[B, num_classes]`` of ``x`` with the parameters adapted to ``task``."""
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.buffer.example_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {', '.join(map(str, self.buffer.example_shape))}], got {got}")
        params = self.adapt(task)
        self.model.eval()
        return functional_call(self.model, (params, dict(self.model.named_buffers())), (x,))

    # ------------------------------------------------------------------ shared training step
    def _joint_step(self, exclude: Optional[int] = None, only: Optional[int] = None) -> Optional[float]:
        """One Adam step of plain training on ``meta_batch`` tasks of the buffer (TOE / FTL), or on
        task ``only`` (from scratch)."""
        cfg = self.config
        if only is not None:
            tasks = [only] * cfg.meta_batch
        elif not [t for t in self.buffer.tasks if t != exclude]:
            return None
        else:
            tasks = self.buffer.sample_tasks(cfg.meta_batch, self.generator, exclude=exclude)
        batches = [self.buffer.sample(k, 2 * cfg.inner_batch, self.generator) for k in tasks]
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        loss = F.cross_entropy(self.model(x), y, label_smoothing=cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        return float(loss.detach())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Model, Adam, task buffer, generator and counters: resuming continues exactly."""
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
                "generator": self.generator.get_state(), "current_task": self.current_task,
                "updates": self.updates, "config": asdict(self.config)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (a state_dict()), got {type(state).__name__}")
        missing = [k for k in ("model", "optimizer", "buffer", "generator", "current_task", "updates") if k not in state]
        if missing:
            raise ValueError(f"state is missing {missing}")
        self.buffer.load_state_dict(state["buffer"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.current_task = state["current_task"]
        self.updates = int(state["updates"])
        self._adapted.clear()


class FTML(OnlineLearner):
    """Follow the meta leader (Finn et al., 2019, Alg. 1 and 2); see the module docstring."""

    def __init__(self, model: nn.Module, input_shape, config: Optional[FTMLConfig] = None):
        super().__init__(model, input_shape, config)
        self._names = [k for k, _ in model.named_parameters()]

    def _task_loss(self, params: Params, x_tr: Tensor, y_tr: Tensor, x_val: Tensor, y_val: Tensor) -> Tensor:
        """``L(D^val, U(w))`` of one task (Eq. 5)."""
        cfg = self.config
        buffers = dict(self.model.named_buffers())
        adapted = sgd_adapt(self.model, params, x_tr, y_tr, lr=cfg.inner_lr, steps=cfg.inner_steps,
                            label_smoothing=cfg.label_smoothing, first_order=cfg.first_order, buffers=buffers)
        return _loss(self.model, adapted, buffers, x_val, y_val, cfg.label_smoothing)

    def meta_gradient(self, x_tr: Tensor, y_tr: Tensor, x_val: Tensor, y_val: Tensor) -> tuple[Params, Tensor]:
        """``g = grad_w mean_k L(D_k^val, U_k(w))`` at the model's parameters (Eq. 5).

        Args:
            x_tr, x_val: ``[K, B, *input_shape]`` minibatches of K tasks; y_tr, y_val: ``[K, B]``.

        Returns:
            ``(g, loss)``: name -> gradient, and the mean validation loss after adaptation.
        """
        shape = self.buffer.example_shape
        for name, x, y in (("x_tr", x_tr, y_tr), ("x_val", x_val, y_val)):
            if x.dim() != 2 + len(shape) or tuple(x.shape[2:]) != shape or y.shape != x.shape[:2]:
                raise ValueError(f"{name} must be [K, B, {', '.join(map(str, shape))}] with labels [K, B], got "
                                 f"{tuple(x.shape)} and {tuple(y.shape)}")
        params = dict(self.model.named_parameters())
        if x_tr.shape[0] == 1:
            loss = self._task_loss(params, x_tr[0], y_tr[0], x_val[0], y_val[0])
        else:  # the K tasks together: conv / linear layers see one batch of K minibatches
            loss = vmap(partial(self._task_loss, params))(x_tr, y_tr, x_val, y_val).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        return dict(zip(params, grads)), loss.detach()

    def _update(self, task: int) -> float:
        cfg = self.config
        tasks = self.buffer.sample_tasks(cfg.meta_batch, self.generator)
        tr = [self.buffer.sample(k, cfg.inner_batch, self.generator) for k in tasks]
        val = [self.buffer.sample(k, cfg.inner_batch, self.generator) for k in tasks]
        g, loss = self.meta_gradient(torch.stack([b[0] for b in tr]), torch.stack([b[1] for b in tr]),
                                     torch.stack([b[0] for b in val]), torch.stack([b[1] for b in val]))
        for name, p in self.model.named_parameters():
            p.grad = g[name]
        self.optimizer.step()
        self.updates += 1
        return float(loss)


class TrainOnEverything(OnlineLearner):
    """TOE: one model trained on all data so far, ``D_t`` included; tested without adaptation."""

    fine_tunes = False

    def _update(self, task: int) -> Optional[float]:
        return self._joint_step()


class FollowTheLeader(OnlineLearner):
    """FTL with fine-tuning: joint training on the tasks before round t, Update-Procedure on ``D_t``."""

    def _update(self, task: int) -> Optional[float]:
        return self._joint_step(exclude=task)


class FromScratch(OnlineLearner):
    """Train from scratch, as the paper defines it (Sec. 6.1: "initializes w_t randomly, and
    finetunes it using D_t"): a new random initialisation for every task and no training on
    arrival; evaluation runs the Update-Procedure (``finetune_steps`` SGD steps of alpha on
    ``D_t``) from that initialisation, like FTML's and FTL's. With this library's N_grad = 5 that
    is little training: expect accuracies near chance (the paper does not give its N_grad).

    :class:`FromScratchAdam` is the stronger reading fastcl used before: the fresh net also gets
    ``N_meta`` Adam steps after each arrival on minibatches of ``D_t`` alone (a new Adam state per
    task). The initialisation of a task uses a seed drawn from the learner's generator
    (``reset_parameters`` of every submodule), so runs and resumed runs agree.
    """

    #: train the fresh net with N_meta Adam steps per arrival (``scratch-adam``)
    adam_steps = False

    def _start_task(self, task: int) -> None:
        seed = int(torch.randint(2**62, (), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.model.modules():
                if m is not self.model and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.optimizer.state.clear()

    def _update(self, task: int) -> Optional[float]:
        return self._joint_step(only=task) if self.adam_steps else None


class FromScratchAdam(FromScratch):
    """From scratch with ``N_meta`` Adam steps per arrival on ``D_t`` (see :class:`FromScratch`)."""

    adam_steps = True


#: name -> learner class, for ``fastcl run ftml|toe|ftl|scratch|scratch-adam``.
ONLINE_LEARNERS: dict[str, type[OnlineLearner]] = {
    "ftml": FTML,
    "toe": TrainOnEverything,
    "ftl": FollowTheLeader,
    "scratch": FromScratch,
    "scratch-adam": FromScratchAdam,
}
