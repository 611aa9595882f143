"""The other baselines of HAL's Table 1: A-GEM and EWC.

* A-GEM (Chaudhry et al., 2019a, "Efficient lifelong learning with A-GEM"): the gradient ``g``
  of the incoming batch is projected when it conflicts with the gradient ``g_ref`` of a batch of
  the episodic memory of previous tasks: if ``g.g_ref < 0``, ``g <- g - (g.g_ref / g_ref.g_ref) g_ref``.
  The memory is the same ring memory as ER-Ring (HAL compares them at equal memory).
* EWC (Kirkpatrick et al., 2017): ``loss + lambda/2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2``
  with the diagonal empirical Fisher ``F_t`` of each finished task (mean squared per-example
  gradient over the task's stream, computed with ``torch.func.vmap(grad)``). The penalty over all
  past tasks is kept in O(parameters) memory as ``A = sum_t F_t`` and ``B = sum_t F_t theta*_t``:
  its gradient is ``lambda * (A*theta - B)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .. import ops
from .base import LearnerConfig, ModelLearner, reject_inert
from .er import ERConfig, ERRing

__all__ = ["AGEM", "AGEMConfig", "EWC", "EWCConfig"]


@dataclass
class AGEMConfig(ERConfig):
    """A-GEM hyperparameters (HAL grid: lr 0.1 on MNIST).

    ``replay_batch`` (of :class:`ERConfig`) is not used: A-GEM replays nothing into the loss.

    Attributes:
        ref_batch: examples of the memory in the reference gradient (A-GEM uses 256), drawn as
            ``replay_replacement`` says (default: distinct examples, every stored one while
            fewer than 256 are held, as in the A-GEM authors' code).
    """

    ref_batch: int = 256

    def __post_init__(self):
        super().__post_init__()
        if self.ref_batch < 1:
            raise ValueError(f"ref_batch must be >= 1, got {self.ref_batch}")
        reject_inert(self, ["replay_batch"], "A-GEM trains on the incoming batch only; its memory batch is ref_batch")


class AGEM(ERRing):
    """Averaged gradient episodic memory on the ring memory of previous tasks."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[AGEMConfig] = None, task_classes=None):
        super().__init__(model, num_classes, input_shape, config or AGEMConfig(), task_classes)

    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        self._start(x, y, task)
        loss = self.loss(x, y, task)
        g = torch.autograd.grad(loss, self.params)
        if task > 0 and any(self.memory.inserted[:task]):
            mx, my, mt = self.memory.sample(self.config.ref_batch, tasks=range(task), generator=self.generator,
                                            replacement=self.config.replay_replacement)
            ref_loss = self.loss(mx, my, mt)
            g_ref = torch.autograd.grad(ref_loss, self.params)
            dot = sum((a * b).sum() for a, b in zip(g, g_ref))
            if dot < 0:
                scale = dot / sum((b * b).sum() for b in g_ref).clamp_min(1e-30)
                g = [a - scale * b for a, b in zip(g, g_ref)]
        with torch.no_grad():
            ops.prox_sgd_(self.params, list(g), None, None, self.config.lr, 0.0)
        self.memory.add(x.detach(), y, task)
        return float(loss.detach())


@dataclass
class EWCConfig(LearnerConfig):
    """EWC hyperparameters (HAL grid: lr 0.1, regularisation 10 on MNIST).

    Attributes:
        lam: lambda, the weight of the quadratic penalty.
    """

    lam: float = 10.0

    def __post_init__(self):
        super().__post_init__()
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")


class EWC(ModelLearner):
    """Elastic weight consolidation with the diagonal empirical Fisher of each finished task."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[EWCConfig] = None, task_classes=None):
        super().__init__(model, num_classes, input_shape, config or EWCConfig(), task_classes)
        self.fisher_sum = [torch.zeros_like(p) for p in self.params]      # A = sum_t F_t
        self.fisher_theta = [torch.zeros_like(p) for p in self.params]    # B = sum_t F_t theta*_t
        self._task_fisher = [torch.zeros_like(p) for p in self.params]
        self._task_examples = 0

    def _per_example_sq_grads(self, x: Tensor, y: Tensor, task: int) -> list[Tensor]:
        params = {n: p.detach() for n, p in zip(self.param_names, self.params)}
        buffers = dict(self.model.named_buffers())

        def loss_one(p, xi, yi):
            out = functional_call(self.model, {**p, **buffers}, (xi.unsqueeze(0),))
            return F.cross_entropy(self.mask_logits(out, task), yi.unsqueeze(0))

        per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
        return [per[n].pow(2).sum(0) for n in self.param_names]

    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        self._check_batch(x, y, task)
        self._begin(task)
        loss = self.loss(x, y, task)
        g = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            lam = self.config.lam
            g = [gi + lam * (a * p - b) for gi, a, b, p in zip(g, self.fisher_sum, self.fisher_theta, self.params)]
            for acc, sq in zip(self._task_fisher, self._per_example_sq_grads(x, y, task)):
                acc.add_(sq)
            self._task_examples += x.shape[0]
            ops.prox_sgd_(self.params, g, None, None, self.config.lr, 0.0)
        return float(loss.detach())

    def end_task(self, task: int) -> None:
        self._check_task(task)
        if self._task_examples == 0:
            return
        with torch.no_grad():
            for a, b, f, p in zip(self.fisher_sum, self.fisher_theta, self._task_fisher, self.params):
                f.div_(self._task_examples)
                a.add_(f)
                b.add_(f * p)
                f.zero_()
        self._task_examples = 0

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({
            "fisher_sum": [t.clone() for t in self.fisher_sum],
            "fisher_theta": [t.clone() for t in self.fisher_theta],
            "task_fisher": [t.clone() for t in self._task_fisher],
            "task_examples": self._task_examples,
        })
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for dst, key in ((self.fisher_sum, "fisher_sum"), (self.fisher_theta, "fisher_theta"),
                         (self._task_fisher, "task_fisher")):
            for d, s in zip(dst, state[key]):
                d.copy_(s)
        self._task_examples = int(state["task_examples"])
