"""MAML and first-order MAML, batched over the tasks of a meta-batch (Finn et al., 2017).

For a meta-batch of B tasks with support sets D_i and query sets D'_i, the inner loop adapts
the meta-parameters theta to each task with plain SGD,

    theta_i^(0) = theta,    theta_i^(s+1) = theta_i^(s) - alpha_s * grad L(theta_i^(s); D_i),

and the meta-update minimises ``mean_i L(theta_i^(S); D'_i)`` over theta with Adam. Second-order
MAML back-propagates through the inner steps (Hessian-vector products included); first-order
MAML (FOMAML) treats the inner gradients as constants, so the meta-gradient is the query
gradient at the adapted parameters.

How it is batched. The per-task parameters are stacked, ``[B, *shape]`` for every tensor (at the
start, ``theta`` expanded: a view, no copy), and one forward runs all tasks at once through
``torch.func.vmap`` over ``torch.func.functional_call``. The inner gradient of every task comes
from a single ``torch.autograd.grad`` of the summed task losses with respect to the stacked
parameters: the tasks are independent, so row i of that gradient is task i's gradient
(``create_graph=True`` for second order). The meta-gradient is one ``backward`` of the mean
query loss. Nesting ``torch.func.grad`` inside ``vmap`` computes the same numbers; it was
measured 2-45% slower here (more functorch levels per op), and autograd on the stacked tensors
lets the inner update call a fused custom op (functorch transforms would make it fall back to its
reference). ``fastcl bench maml`` has the figures.

The inner update. ``fused_inner=True`` runs it with the fused differentiable
:func:`fastcl.ops.prox_sgd` (prox 0: ``p - alpha*g``, one call for every tensor, registered
autograd, twice differentiable); the default is the plain expression ``p - alpha*g`` per tensor.
On MAML's networks (the 1-40-40-1 sinusoid MLP: six small tensors) the update is two tiny
element-wise ops per tensor, so the custom op's dispatch and its Python autograd node cost more
than they save: the benchmark measures the fused update 5-30% slower, hence the default.

BatchNorm. BatchNorm-free models are the default and what the sinusoid MLP is. Buffers are not
batched: under ``vmap`` a BatchNorm layer in training mode would update its shared running
statistics in place with per-task values, which vmap rejects ("a batched tensor written into an
unbatched one"). Use ``track_running_stats=False`` (batch statistics per task, what MAML's
reference code does) or put the model in ``eval()`` mode; the learner checks neither.

The test-time entry point is :meth:`MAML.adapt` (stacked fast weights for a batch of support
sets) with :meth:`MAML.predict`; :meth:`MAML.evaluate` gives per-task query losses.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .. import ops
from ..data.meta_tasks import TaskBatch
from .base import reject_inert

__all__ = ["MAMLConfig", "MAML", "MetaStepResult", "LOSSES"]

#: per-task loss on ``(prediction [K, ...], target [K, ...])``.
LOSSES = {
    "mse": F.mse_loss,
    "cross_entropy": F.cross_entropy,
}


class MetaStepResult(NamedTuple):
    """What :meth:`MAML.meta_step` returns.

    Attributes:
        loss: the mean query loss after adaptation (the meta-objective before the update).
        grad_norm: the global L2 norm of the meta-gradient, before any clipping.
        clipped: whether clipping (``MAMLConfig.clip_grad``) scaled the meta-gradient down.
    """

    loss: float
    grad_norm: float
    clipped: bool


@dataclass
class MAMLConfig:
    """MAML hyperparameters (defaults: the sinusoid setting of MAML Sec. 5.1 and L2F Table E).

    Attributes:
        inner_lr: alpha, the inner SGD step size (0.01).
        inner_steps: number of inner SGD steps during meta-training (1 in MAML's sinusoid runs).
        inner_lrs: per-step step sizes alpha_s (length ``inner_steps``); empty: ``inner_lr`` at
            every step (with ``inner_lrs``, ``inner_lr`` must stay at its default).
        meta_lr: beta, Adam's step size for the meta-update (0.001).
        first_order: FOMAML: drop the second-order terms of the meta-gradient.
        clip_grad: clip the meta-gradient's global L2 norm to this value (0: no clipping).
            Second-order MAML on sinusoids can diverge after some thousand meta-iterations.
        fused_inner: inner update with the fused differentiable ``ops.prox_sgd`` (see the module
            docstring: slower on small networks, so off by default).
        loss: "mse" (regression) or "cross_entropy" (classification).

    MAML draws nothing itself (the caller samples the task batches), so it takes no seed.
    """

    inner_lr: float = 0.01
    inner_steps: int = 1
    inner_lrs: tuple = ()
    meta_lr: float = 0.001
    first_order: bool = False
    clip_grad: float = 0.0
    fused_inner: bool = False
    loss: str = "mse"

    def __post_init__(self):
        for name in ("inner_lr", "meta_lr", "clip_grad"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {self.inner_steps!r}")
        self.inner_lrs = tuple(float(a) for a in self.inner_lrs)
        if self.inner_lrs and len(self.inner_lrs) != self.inner_steps:
            raise ValueError(f"inner_lrs must hold one step size per inner step ({self.inner_steps}), "
                             f"got {len(self.inner_lrs)}")
        if self.inner_lrs:
            reject_inert(self, ["inner_lr"], "inner_lrs gives every inner step its own step size")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    def step_sizes(self, steps: Optional[int] = None) -> list[float]:
        """alpha_s for ``steps`` inner steps (``inner_lrs`` cycles past its end at test time)."""
        n = self.inner_steps if steps is None else steps
        if not self.inner_lrs:
            return [float(self.inner_lr)] * n
        return [self.inner_lrs[min(s, len(self.inner_lrs) - 1)] for s in range(n)]


class MAML:
    """Second-order MAML or FOMAML on a functional model, batched over tasks.

    Args:
        model: the network f_theta; its parameters are the meta-parameters theta. BatchNorm-free
            (see the module docstring).
        config: :class:`MAMLConfig`.
        input_shape: shape of one input example; checked against every support / query set when
            given (``None``: set by the first meta-batch).
    """

    def __init__(self, model: nn.Module, config: Optional[MAMLConfig] = None,
                 input_shape: Optional[Sequence[int]] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.config = config if config is not None else MAMLConfig()
        if not isinstance(self.config, MAMLConfig):
            raise TypeError(f"config must be a MAMLConfig, got {type(self.config).__name__}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters")
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.buffers = dict(model.named_buffers())
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.loss_fn = LOSSES[self.config.loss]
        self.steps = 0
        self.optimizer = torch.optim.Adam(self.meta_parameters(), lr=self.config.meta_lr)

    # -- functional pieces ----------------------------------------------------------------
    def meta_parameters(self) -> list[Tensor]:
        """What the meta-optimiser updates (theta; L2F adds phi)."""
        return list(self.params)

    def _task_loss(self, params: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(self.model, ({**dict(zip(self.param_names, params)), **self.buffers}), (x,))
        if self.config.loss == "mse" and out.shape != y.shape:
            # F.mse_loss would broadcast [K, 1] against [K] into [K, K] and average nonsense
            raise ValueError(f"targets have shape [B, {', '.join(map(str, y.shape))}] but the model's outputs "
                             f"[B, {', '.join(map(str, out.shape))}]: give targets the outputs' shape "
                             "(e.g. y.unsqueeze(-1))")
        return self.loss_fn(out, y)

    def task_losses(self, fast: Sequence[Tensor], x: Tensor, y: Tensor) -> Tensor:
        """``[B]`` loss of each task's stacked parameters ``fast[i]`` ``[B, *shape]`` on its data."""
        return vmap(self._task_loss)(list(fast), x, y)

    def predict(self, fast: Sequence[Tensor], x: Tensor) -> Tensor:
        """Outputs ``[B, N, ...]`` of each task's adapted network on ``x`` ``[B, N, *input_shape]``."""
        self._check_x(x, "x")
        names = self.param_names

        def one(params, xb):
            return functional_call(self.model, ({**dict(zip(names, params)), **self.buffers}), (xb,))

        return vmap(one)(list(fast), x)

    def expand(self, num_tasks: int, params: Optional[Sequence[Tensor]] = None) -> list[Tensor]:
        """theta stacked for ``num_tasks`` tasks: ``[B, *shape]`` views (no copy)."""
        params = self.params if params is None else list(params)
        return [p.unsqueeze(0).expand(num_tasks, *p.shape) for p in params]

    def initial_fast(self, support_x: Tensor, support_y: Tensor, params: Optional[Sequence[Tensor]] = None,
                     create_graph: bool = True) -> list[Tensor]:
        """theta_i^(0) of every task: theta itself in MAML (L2F attenuates it per task)."""
        return self.expand(support_x.shape[0], params)

    def inner_loop(self, fast: Sequence[Tensor], support_x: Tensor, support_y: Tensor, lrs: Sequence[float],
                   create_graph: bool) -> list[Tensor]:
        """The inner SGD steps from the stacked ``fast``; ``create_graph``: keep the graph
        through the inner gradients (second order)."""
        fast = list(fast)
        for lr in lrs:
            loss = self.task_losses(fast, support_x, support_y).sum()
            grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
            if self.config.fused_inner:
                fast = list(ops.prox_sgd(fast, grads, None, None, float(lr), 0.0))
            else:
                fast = [p - lr * g for p, g in zip(fast, grads)]
        return fast

    def adapt(self, support_x: Tensor, support_y: Tensor, params: Optional[Sequence[Tensor]] = None,
              steps: Optional[int] = None, create_graph: bool = False) -> list[Tensor]:
        """Adapt to a batch of support sets; returns the stacked fast weights ``[B, *shape]``.

        Args:
            support_x: ``[B, K, *input_shape]`` (one task: add a leading 1).
            support_y: ``[B, K, ...]`` targets.
            params: the starting point theta (default: the model's parameters).
            steps: inner steps (default ``config.inner_steps``; step sizes of ``config.step_sizes``).
            create_graph: keep the graph for a meta-gradient (``False`` at test time).
        """
        self._check_set(support_x, support_y, "support")
        steps = self.config.inner_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        with torch.enable_grad():
            fast = self.initial_fast(support_x, support_y, params, create_graph)
            if not create_graph and steps > 0:
                # detach the start so the test-time loop builds no graph back to theta
                fast = [f.detach().requires_grad_(True) for f in fast]
            out = self.inner_loop(fast, support_x, support_y, self.config.step_sizes(steps), create_graph)
        return out if create_graph else [f.detach() for f in out]

    def outer_loss(self, tasks: TaskBatch, params: Optional[Sequence[Tensor]] = None) -> Tensor:
        """The meta-objective ``mean_i L(theta_i^(S); D'_i)``, differentiable in theta (and phi).

        This is how to get a meta-gradient without taking a step::

            grads = torch.autograd.grad(learner.outer_loss(tasks), learner.meta_parameters())

        Args:
            tasks: a :class:`~fastcl.data.meta_tasks.TaskBatch`, or any tuple / list
                ``(support_x, support_y, query_x, query_y)`` of ``[B, K, ...]`` tensors.
            params: the starting point theta (default: the model's parameters).
        """
        tasks = self._check_tasks(tasks)
        second = not self.config.first_order
        fast = self.initial_fast(tasks.support_x, tasks.support_y, params, create_graph=True)
        fast = self.inner_loop(fast, tasks.support_x, tasks.support_y, self.config.step_sizes(), second)
        return self.task_losses(fast, tasks.query_x, tasks.query_y).mean()

    def meta_step(self, tasks: TaskBatch) -> MetaStepResult:
        """One meta-update on a meta-batch: Adam on the meta-gradient, clipped to
        ``config.clip_grad`` if set.

        Args:
            tasks: as :meth:`outer_loss`.

        Returns:
            :class:`MetaStepResult`: the mean query loss after adaptation, the meta-gradient's
            norm before clipping, and whether clipping acted.
        """
        loss = self.outer_loss(tasks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.meta_parameters() if p.grad is not None]
        clip = self.config.clip_grad
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        self.optimizer.step()
        self.steps += 1
        norm = float(norm)
        return MetaStepResult(float(loss.detach()), norm, bool(clip > 0 and norm > clip))

    def evaluate(self, tasks: TaskBatch, steps: Optional[int] = None) -> Tensor:
        """``[B]`` query loss of each task after adapting on its support set (no meta-update)."""
        tasks = self._check_tasks(tasks)
        fast = self.adapt(tasks.support_x, tasks.support_y, steps=steps)
        with torch.no_grad():
            return self.task_losses(fast, tasks.query_x, tasks.query_y)

    # -- checks ---------------------------------------------------------------------------
    def _check_x(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
        dtype = self.params[0].dtype
        if x.dtype != dtype:
            raise TypeError(f"{name} is {x.dtype} but the model's parameters are {dtype}: convert one of "
                            f"them (e.g. {name}.to({dtype}))")
        if x.dim() < 2 or (x.dim() == 2 and self.input_shape != ()):
            raise ValueError(f"{name} must be [B, K, *input_shape], stacked over B tasks of K examples, got shape "
                             f"{tuple(x.shape)}; for one task add the task dimension ({name}.unsqueeze(0)); "
                             "for scalar examples build the learner with input_shape=()")
        if self.input_shape is not None and tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected [B, K, "
                             f"{', '.join(map(str, self.input_shape))}]")

    def _check_set(self, x: Tensor, y: Tensor, name: str) -> None:
        self._check_x(x, f"{name}_x")
        if not isinstance(y, Tensor):
            raise TypeError(f"{name}_y must be a tensor, got {type(y).__name__}")
        if y.dim() < 2 or tuple(y.shape[:2]) != tuple(x.shape[:2]):
            raise ValueError(f"{name}_y has shape {tuple(y.shape)}; expected [B, K, ...] with B, K = "
                             f"{tuple(x.shape[:2])} from {name}_x")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name} set must hold at least one task and one example, got {tuple(x.shape)}")

    def _check_tasks(self, tasks: TaskBatch) -> TaskBatch:
        if not isinstance(tasks, (tuple, list)) or len(tasks) != 4:
            raise TypeError("tasks must be a TaskBatch or a tuple / list (support_x, support_y, query_x, query_y), "
                            f"got {type(tasks).__name__}" + (f" of {len(tasks)}" if isinstance(tasks, (tuple, list))
                                                              else ""))
        tasks = TaskBatch(*tasks)
        self._check_set(tasks.support_x, tasks.support_y, "support")
        self._check_set(tasks.query_x, tasks.query_y, "query")
        if tasks.query_x.shape[0] != tasks.support_x.shape[0]:
            raise ValueError(f"query set has {tasks.query_x.shape[0]} tasks, support set {tasks.support_x.shape[0]}")
        if tasks.query_x.shape[2:] != tasks.support_x.shape[2:]:
            raise ValueError(f"query_x examples have shape {tuple(tasks.query_x.shape[2:])}, support_x "
                             f"{tuple(tasks.support_x.shape[2:])}")
        if self.input_shape is None:
            self.input_shape = tuple(tasks.support_x.shape[2:])
        return tasks

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model, meta-optimiser state, step count and input shape."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "steps": self.steps,
            "input_shape": self.input_shape,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.input_shape = None if state["input_shape"] is None else tuple(state["input_shape"])
