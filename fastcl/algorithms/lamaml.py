"""La-MAML: look-ahead meta-learning with learnable per-parameter learning rates.

Gupta, Yadav and Paull, 2020; the baseline EMCL starts from (EMCL Sec. III-C, Table II), whose
La-MAML code EMCL adopted from the authors' repository (github.com/montrealrobotics/La-MAML,
``model/lamaml.py``; EMCL footnote 2). For every incoming batch ``b`` (10 examples) and each of
``glances`` consecutive meta-updates:

1. draw a replay batch from the reservoir memory; the meta batch is ``b`` joined with it;
2. inner loop: one step per single example of ``b``,
   ``theta_{i+1} = theta_i - relu(alpha) * grad l(theta_i; b[i])``, starting from ``theta_0``;
3. meta loss: ``meta_loss="prefix"`` (default, the authors' code) the mean over the inner-step
   prefixes, ``(1/k) sum_{i=1..k} L_t(theta_i)``, a meta loss after every inner step;
   ``meta_loss="last"`` the loss once at the fast weights ``theta_k`` (EMCL Eq. 5 read literally:
   ``L_t(U_k(theta_0, S_k))``). ``L_t`` is the mean cross-entropy of the meta batch;
4. meta update: ``alpha <- alpha - eta * clip(dL/dalpha)`` first, then
   ``theta_0 <- theta_0 - relu(alpha) * clip(dL/dtheta_0)`` with the *updated* rates (the
   authors' code: ``opt_lr.step()``, then ``p - p.grad * relu(alpha_lr)``).

``second_order=True`` back-propagates through the inner gradients (the Hessian-vector products
of MAML); ``second_order=False`` treats them as constants (first-order La-MAML, what the authors'
MNIST runs use: ``run_experiments.sh`` passes no ``--second_order``); both give the rates their
gradient through the inner trajectory. After the glances the batch is offered to the reservoir.

Other differences from the authors' code (see docs/emcl.md, "La-MAML against the authors' code", for the list):
no inner-gradient clamp (the public code computes one and discards the result, so the step is
the same); the batch joins the reservoir after its glances, not during the first one; the inner
loop keeps the batch's order at every glance (the public code re-shuffles it); the inner steps
build no per-example loss objects beyond the one they need, and the MLP forward runs on the fast
weights without ``functional_call``.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._warnings import SlowPathWarning
from ..memory import ReservoirBuffer
from ..models import MLP
from .base import LearnerConfig, ModelLearner, reject_inert

__all__ = ["META_LOSSES", "LaMAML", "LaMAMLConfig", "ReplayMetaConfig", "ReplayMetaLearner", "functional_forward"]


@dataclass
class ReplayMetaConfig(LearnerConfig):
    """Settings of the replay meta-learners (La-MAML, EMCL): memory and glances.

    Attributes:
        memory_size: reservoir capacity in examples (200 on MNIST Permutations, 500 on Many
            Permutations, EMCL Sec. V); 0 disables replay.
        replay_batch: examples drawn from the memory for each meta-update (10).
        glances: consecutive meta-updates on each incoming batch (La-MAML's MNIST setting: 5).
    """

    memory_size: int = 200
    replay_batch: int = 10
    glances: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {self.memory_size}")
        if self.replay_batch < 0:
            raise ValueError(f"replay_batch must be >= 0, got {self.replay_batch}")
        if self.glances < 1:
            raise ValueError(f"glances must be >= 1, got {self.glances}")


def _reject_unused_lr(cfg, rates: str) -> None:
    """``lr`` (inherited from :class:`LearnerConfig`) means nothing to a learner whose learning rates
    are ``rates``: a value other than its default is an error, not silently ignored."""
    reject_inert(cfg, ["lr"], f"its learning rates are {rates}")


def _check_positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def functional_forward(model: nn.Module, names: Sequence[str], params: Sequence[Tensor], x: Tensor) -> Tensor:
    """``model(x)`` evaluated at ``params`` (in the order of ``names``) instead of its own.

    An ``nn.Sequential`` of Flatten / Linear / ReLU (a user's, or fastcl's
    :class:`~fastcl.models.MLP`, which flattens its input first) runs as a plain chain of
    ``F.linear`` (no module swapping); any other model goes through ``torch.func.functional_call``.
    """
    if isinstance(model, nn.Sequential) and all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU)) for m in model):
        if isinstance(model, MLP):
            x = x.flatten(1)
        it = iter(params)
        for m in model:
            if isinstance(m, nn.Linear):
                w = next(it)
                x = F.linear(x, w, next(it) if m.bias is not None else None)
            elif isinstance(m, nn.ReLU):
                x = F.relu(x)
            else:
                x = m(x)
        return x
    return torch.func.functional_call(model, dict(zip(names, params)), (x,))


def is_plain_mlp(model: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of Flatten / Linear (with bias) / ReLU ending in a Linear: the
    models :func:`mlp_grads` differentiates by hand. fastcl's :class:`~fastcl.models.MLP` is one,
    and so is a user's ``nn.Sequential(nn.Linear(784, 100), nn.ReLU(), ..., nn.Linear(100, 10))``,
    with or without a leading ``nn.Flatten``. :func:`why_not_plain_mlp` says what keeps a model out."""
    return why_not_plain_mlp(model) is None


def why_not_plain_mlp(model: nn.Module) -> Optional[str]:
    """None for a plain MLP (see :func:`is_plain_mlp`), else why it is not one, naming the module."""
    if not isinstance(model, nn.Sequential):
        return f"the model is a {type(model).__name__}, not an nn.Sequential of Linear / ReLU layers"
    mods = list(model)
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            if m.bias is None:
                return f"module {i} is an nn.Linear without bias"
        elif not isinstance(m, (nn.Flatten, nn.ReLU)):
            return (f"module {i} is a {type(m).__name__} (only nn.Linear, nn.ReLU and nn.Flatten are "
                    f"differentiated by hand)")
        if isinstance(m, nn.Flatten) and any(isinstance(a, nn.Linear) for a in mods[:i]):
            return f"module {i} is an nn.Flatten after a Linear"
        if isinstance(m, nn.ReLU) and not (i > 0 and isinstance(mods[i - 1], nn.Linear)
                                           and i + 1 < len(mods) and isinstance(mods[i + 1], nn.Linear)):
            return f"module {i} is an nn.ReLU that does not sit between two nn.Linear"
    if not mods or not isinstance(mods[-1], nn.Linear):
        return "the nn.Sequential does not end in an nn.Linear"
    return None


def warn_slow_path(learner: object, reason: str, fast: str) -> None:
    """Issue one :class:`fastcl.SlowPathWarning` for ``learner``: it runs per-step autograd because
    of ``reason`` instead of ``fast``."""
    warnings.warn(f"{type(learner).__name__} takes its slow path (per-step autograd) instead of {fast}: {reason}. "
                  f"Same results, slower; an nn.Sequential of nn.Linear (with bias) / nn.ReLU layers, "
                  f"optionally after an nn.Flatten, takes the fast one.", SlowPathWarning, stacklevel=3)


def relu_mlp(model: nn.Module) -> bool:
    """True for a plain MLP (see :func:`is_plain_mlp`) with a ReLU after every Linear but the last:
    the net :func:`fastcl.ops.mlp_prox_steps_` runs (a hidden Linear without a ReLU is not one)."""
    if not is_plain_mlp(model):
        return False
    relu = _relu_after(model)
    return all(relu[:-1])


_STRUCTURE: "weakref.WeakKeyDictionary[nn.Module, tuple[bool, ...]]" = weakref.WeakKeyDictionary()


def _relu_after(model: nn.Sequential) -> tuple[bool, ...]:
    """For each Linear of a plain MLP, whether a ReLU follows it (cached per model)."""
    got = _STRUCTURE.get(model)
    if got is None:
        mods = list(model)
        got = tuple(i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                    for i, m in enumerate(mods) if isinstance(m, nn.Linear))
        _STRUCTURE[model] = got
    return got


@torch.no_grad()
def mlp_grads(model: nn.Sequential, params: Sequence[Tensor], x: Tensor, y: Tensor,
              mask: Optional[Tensor] = None, need_loss: bool = True,
              out: Optional[Sequence[Tensor]] = None) -> tuple[Optional[Tensor], list[Tensor]]:
    """Mean cross-entropy of a plain MLP (see :func:`is_plain_mlp`) at ``params`` and its gradient,
    by hand: the forward pass keeps the activations, the backward pass is two small matmuls and
    a ReLU mask per layer. About twice as fast as autograd for the single-example inner steps.

    Args:
        model: the MLP (its structure only; the weights are ``params``: weight, bias per Linear).
        params: ``[W_1, b_1, ..., W_L, b_L]``.
        x: ``[B, ...]`` inputs; y: ``[B]`` labels.
        mask: optional ``[B, C]`` or ``[C]`` bool, the logits kept (multi-head); others are -inf.
        need_loss: compute the loss (else None is returned in its place).
        out: optional gradient buffers (shapes of ``params``), written and returned: reusing
            them spares the page faults of a fresh first-layer gradient at every step.

    Returns:
        ``(loss, grads)``: the loss (0-d) and one gradient per parameter.
    """
    a = x.reshape(x.shape[0], -1)
    acts: list[Tensor] = []
    weights = params[0::2]
    relu_after = _relu_after(model)
    for i, (w, b) in enumerate(zip(weights, params[1::2])):
        acts.append(a)
        a = torch.addmm(b, a, w.t())
        if relu_after[i]:
            a = a.relu_()
    if mask is not None:
        a = a.masked_fill(~mask, float("-inf"))
    n = y.shape[0]
    loss = F.cross_entropy(a, y) if need_loss else None
    d = torch.softmax(a, 1)
    d.scatter_add_(1, y.unsqueeze(1), d.new_full((n, 1), -1.0))  # softmax - onehot
    if n > 1:
        d.div_(n)
    grads: list[Tensor] = [None] * len(params) if out is None else list(out)  # type: ignore[list-item]
    for i in range(len(weights) - 1, -1, -1):
        if out is None:
            grads[2 * i] = d.t().mm(acts[i])
            grads[2 * i + 1] = d.sum(0)
        else:
            torch.mm(d.t(), acts[i], out=grads[2 * i])
            torch.sum(d, 0, out=grads[2 * i + 1])
        if i > 0:
            d = d.mm(weights[i])
            if relu_after[i - 1]:
                d = torch.ops.aten.threshold_backward(d, acts[i], 0)
    return loss, grads


class ReplayMetaLearner(ModelLearner):
    """Shared frame of La-MAML and EMCL: reservoir replay and glances around :meth:`meta_update`."""

    config: ReplayMetaConfig

    def __init__(self, model, num_classes, input_shape, config: ReplayMetaConfig, task_classes=None):
        super().__init__(model, num_classes, input_shape, config, task_classes)
        dtype = next(model.parameters()).dtype
        self.memory = (ReservoirBuffer(config.memory_size, self.input_shape, dtype=dtype, device=self.device)
                       if config.memory_size > 0 else None)

    def meta_batch(self, x: Tensor, y: Tensor, task: int) -> tuple[Tensor, Tensor, Tensor | int]:
        """The incoming batch joined with a replay batch from the reservoir (x, y, tasks)."""
        if self.memory is None or len(self.memory) == 0 or self.config.replay_batch == 0:
            return x, y, task
        mx, my, mt = self.memory.sample(self.config.replay_batch, generator=self.generator)
        tasks = torch.cat([torch.full_like(y, task), mt]) if self.task_classes is not None else task
        return torch.cat([x, mx]), torch.cat([y, my]), tasks

    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        self._check_batch(x, y, task)
        if x.shape[0] == 0:  # nothing to learn from: a no-op (the loss of no example), as the other learners
            return float("nan")
        self._begin(task)
        loss = 0.0
        for _ in range(self.config.glances):
            loss = self.meta_update(x, y, task, *self.meta_batch(x, y, task))
        if self.memory is not None:
            self.memory.add(x.detach(), y, task, generator=self.generator)
        return loss

    def meta_update(self, x: Tensor, y: Tensor, task: int, bx: Tensor, by: Tensor, btasks: Tensor | int) -> float:
        """One meta-update on the incoming batch ``(x, y)`` and the meta batch ``(bx, by)``;
        returns the meta loss."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["memory"] = None if self.memory is None else self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.memory is not None:
            self.memory.load_state_dict(state["memory"])


#: the readings of La-MAML's meta loss (see :class:`LaMAMLConfig`)
META_LOSSES = ("prefix", "last")


@dataclass
class LaMAMLConfig(ReplayMetaConfig):
    """La-MAML hyperparameters (EMCL Table II, MNIST Permutations).

    Attributes:
        alpha0: alpha_0, initial value of every per-parameter learning rate (0.3; 0.1 on Many
            Permutations).
        eta: eta, learning rate of the rates alpha (0.15; 0.1 on Many Permutations).
        second_order: back-propagate through the inner gradients (La-MAML); False: first order.
        grad_clip: gradient-norm clip of the meta gradients (theta and alpha clipped separately,
            as the public code); 0 disables it.
        meta_loss: ``"prefix"`` (default, the authors' code): the meta loss is the mean of the
            meta-batch loss after each inner step, ``(1/k) sum_i L_t(theta_i)``; ``"last"``: once
            at ``theta_k`` (EMCL Eq. 5 read literally; fastcl's default before issue 12).
    """

    alpha0: float = 0.3
    eta: float = 0.15
    second_order: bool = True
    grad_clip: float = 2.0
    meta_loss: str = "prefix"
    lr: float = 0.0  # unused (rejected): the rates alpha are the learning rates

    def __post_init__(self):
        super().__post_init__()
        _reject_unused_lr(self, "the learnable rates alpha (alpha0) and their rate eta")
        _check_positive(self, "alpha0", "eta", "grad_clip")
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss must be one of {', '.join(META_LOSSES)}, got {self.meta_loss!r}")


def _clip_(grads: list[Tensor], max_norm: float) -> None:
    if max_norm > 0:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, scale)


class LaMAML(ReplayMetaLearner):
    """La-MAML (see the module docstring) on the learner protocol.

    State beyond the model: the rates ``alpha`` (one tensor per parameter), the reservoir memory
    and the generator; all in :meth:`state_dict`.
    """

    config: LaMAMLConfig

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[LaMAMLConfig] = None, task_classes=None):
        config = config or LaMAMLConfig()
        super().__init__(model, num_classes, input_shape, config, task_classes)
        self.alpha = [torch.full_like(p, config.alpha0) for p in self.params]
        self.by_hand = is_plain_mlp(model)  # first order on an MLP: no autograd graph at all
        if not self.by_hand and not config.second_order:
            warn_slow_path(self, why_not_plain_mlp(model), "first-order gradients by hand")

    def _fast_loss(self, fast: Sequence[Tensor], x: Tensor, y: Tensor, tasks: Tensor | int) -> Tensor:
        out = functional_forward(self.model, self.param_names, fast, x)
        return F.cross_entropy(self.mask_logits(out, tasks), y)

    def _meta_grads_first_order(self, x, y, task, bx, by, btasks):
        """First-order meta gradients without a graph. With the inner gradients g_i constant,
        ``theta_i = theta_0 - relu(alpha) * S_i``, ``S_i = sum_{j<=i} g_j``; with
        ``G_i = grad L(theta_i)`` and the meta loss ``(1/k) sum_i L(theta_i)`` (``"prefix"``):
        ``dL/dtheta_0 = (1/k) sum_i G_i`` and ``dL/dalpha = -(1/k) sum_i S_i * G_i * [alpha > 0]``;
        ``"last"``: the same with the one term ``i = k``."""
        rates = [a.clamp(min=0) for a in self.alpha]
        fast = [p.detach() for p in self.params]
        prefix = self.config.meta_loss == "prefix"
        mask = self.mask_table
        inner_mask = None if mask is None else mask[task]
        meta_mask = None if mask is None else mask[btasks]
        total: Optional[list[Tensor]] = None  # S_i
        loss_sum, g_theta, g_alpha = 0.0, None, None
        k = x.shape[0]
        for i in range(k):
            _, g = mlp_grads(self.model, fast, x[i:i + 1], y[i:i + 1], inner_mask, need_loss=False)
            fast = torch._foreach_sub(fast, torch._foreach_mul(rates, g))
            total = g if total is None else torch._foreach_add(total, g)
            if prefix or i == k - 1:
                loss, g_i = mlp_grads(self.model, fast, bx, by, meta_mask)
                loss_sum = loss_sum + loss
                sg = torch._foreach_mul(total, g_i)
                if g_theta is None:
                    g_theta, g_alpha = g_i, sg
                else:
                    torch._foreach_add_(g_theta, g_i)
                    torch._foreach_add_(g_alpha, sg)
        n = k if prefix else 1
        if n > 1:
            torch._foreach_div_(g_theta, n)
            torch._foreach_div_(g_alpha, n)
        torch._foreach_mul_(g_alpha, [(a > 0).to(a.dtype).neg_() for a in self.alpha])
        return loss_sum / n, g_theta, g_alpha

    def meta_update(self, x, y, task, bx, by, btasks) -> float:
        if self.by_hand and not self.config.second_order:
            meta_loss, g_theta, g_alpha = self._meta_grads_first_order(x, y, task, bx, by, btasks)
            self._apply(g_theta, g_alpha)
            return float(meta_loss)
        second = self.config.second_order
        prefix = self.config.meta_loss == "prefix"
        alpha = [a.detach().requires_grad_(True) for a in self.alpha]
        rates = [F.relu(a) for a in alpha]
        fast: list[Tensor] = list(self.params)
        losses: list[Tensor] = []
        for i in range(x.shape[0]):  # sequential by definition: step i starts where step i-1 ended
            loss_i = self._fast_loss(fast, x[i:i + 1], y[i:i + 1], task)
            grads = torch.autograd.grad(loss_i, fast, create_graph=second)
            fast = [w - r * g for w, r, g in zip(fast, rates, grads)]
            if prefix:  # the authors' code: a meta loss after every inner step, averaged
                losses.append(self._fast_loss(fast, bx, by, btasks))
        meta_loss = torch.stack(losses).mean() if prefix else self._fast_loss(fast, bx, by, btasks)
        grads = torch.autograd.grad(meta_loss, self.params + alpha)
        self._apply(list(grads[:len(self.params)]), list(grads[len(self.params):]))
        return float(meta_loss.detach())

    def _apply(self, g_theta: list[Tensor], g_alpha: list[Tensor]) -> None:
        """Clip, then ``alpha -= eta * g_alpha`` and ``theta_0 -= relu(alpha) * g_theta``."""
        clip = self.config.grad_clip
        _clip_(g_alpha, clip)
        _clip_(g_theta, clip)
        with torch.no_grad():
            torch._foreach_add_(self.alpha, g_alpha, alpha=-self.config.eta)  # alpha first ...
            step = torch._foreach_mul(g_theta, [a.clamp(min=0) for a in self.alpha])
            torch._foreach_sub_(self.params, step)  # ... then theta with relu(alpha_new)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["alpha"] = [a.clone() for a in self.alpha]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for a, s in zip(self.alpha, state["alpha"]):
                a.copy_(s)
