"""EMCL: efficient meta-learning for continual learning (Zou and Lin; Algorithm 1).

By default, Algorithm 1 as written: for every incoming batch ``b`` (and each of ``glances``
consecutive meta-updates, La-MAML's frame, see :mod:`fastcl.algorithms.lamaml`; the paper follows
La-MAML's single-pass setting, its Algorithm 1 shows one meta-update per batch: ``glances=1``),
with no image memory (Table II gives EMCL no memory size; Sec. VI: EMCL "only needs a much smaller
memory for storing ... parameter importance and per-parameter learning rates"):

1. ``g = dL_t(theta_0; b) / dtheta_0``, the gradient the importance is estimated from (Eq. 13),
   with ``L_t`` the *sum* of the losses of the examples of b (Eq. 1: ``L_t`` sums the task-wise
   losses; ``importance_scale``);
2. inner loop from ``theta_0`` over the ``k = |b|`` single examples of ``b`` (Alg. 1, l. 4-7): a
   gradient step of rate beta (Eq. 16) followed by the closed-form proximal step toward
   ``theta_0`` (Eq. 21), ``theta <- (theta - beta*grad + gamma*lambda*h*theta_0) /
   (gamma*lambda*h + 1)``. On a plain ReLU MLP the whole loop (k gradients and k steps) is one
   fused call (:func:`fastcl.ops.mlp_prox_steps_`); on other models (or ``fused_inner=False``)
   each step's gradient comes from autograd (or :func:`~fastcl.algorithms.lamaml.mlp_grads`)
   and the step is one fused :func:`fastcl.ops.prox_sgd_` call;
3. meta update in one fused call (:func:`fastcl.ops.emcl_meta_step_`): the closed-form
   meta-gradient ``lambda*h*(theta_0 - theta_k)`` (Eq. 10) applied with the per-parameter rates
   alpha^j (Alg. 1, l. 9), the importance ``h <- eta*h + (1-eta)*|g*theta_0|`` (Eq. 7, 13), and
   the rates of Eq. 8 for the next step (l. 8). No second-order derivative anywhere.

``memory_size > 0`` (the learner ``emcl-replay``; the default before v4) adds a reservoir memory
of that many examples: ``replay_batch`` replayed examples join b in the importance gradient and,
with ``inner_replay`` (default), in the inner loop (``False``: the inner loop on the incoming
batch only). The paper does not do this; it is La-MAML's frame, kept as an option.

Choices the paper leaves open (named so they can be changed):

* ``lr_mode``, the reading of Eq. 8. The meta step of Eq. 10 is ``alpha*lambda*h*(theta_0 -
  theta_k)``, proportional to h; Sec. IV-B scales "the learning rate for each parameter inversely
  proportional to the moving average of its importance", so the product ``alpha*lambda*h`` loses
  the h: the meta update is the MetaMinibatchProx / Reptile interpolation of the paper's ref.
  [40], ``theta_0 <- theta_0 + alpha0*r*lambda*(theta_k - theta_0)``, the same for every
  parameter, and the importance can act only through the proximal inner loop (Eq. 6, 21), which
  keeps theta_k of important parameters near theta_0 ("changes in important parameters can be
  reduced"). Default ``"inverse"``: ``alpha = alpha0 * r / (h + eps)``, Eq. 8 from alpha_0 at
  every step (no compounding, no cap), mode 2 of the fused op: the most literal reading that
  trains. ``"paper"``: Eq. 8 as printed, ``alpha <- alpha*r/h``, which compounds (alpha carries
  prod(r/h) and collapses or explodes). ``"stabilised"`` (the default before v2): ``alpha =
  alpha0 * min(1, r/h)``; the cap keeps the h of Eq. 10 for h < r, so the meta step *grows* with
  the importance up to r, against Sec. IV-B's intent. No reading of Eq. 8 with the h of Eq. 10
  makes the meta step shrink with h: Eq. 8 at most cancels it.
* ``importance_scale``: ``"sum"`` (default, since v4): ``L_t`` of Eq. 13 is the sum of the
  losses of the examples of b (Eq. 1 sums the task-wise losses, each a sum over its examples),
  i.e. |b| times the gradient of the mean loss; ``"mean"``: their mean (the default before v4).
  On the MNIST MLP the summed Omega is ~1e-5 to 1e-2, still small against 1/(gamma*lambda):
  docs/emcl.md ("What the paper leaves open") for what the importance changes on the two MNIST streams.
* ``importance_norm``: ``False`` (default) is Eq. 13 verbatim, ``Omega = |g*theta|``. ``True``
  divides Omega by its mean over each parameter tensor (relative importance, mean 1): the prox
  then acts strongly (about a 4x shrink per inner step at h = 1).
* ``uniform_importance`` (an ablation, default False): the inner loop (the prox of Eq. 21, the
  regulariser of Eq. 6) uses h's mean over all parameters in every element instead of h, so the
  importance keeps its scale but no longer tells parameters apart; Eq. 10 and Eq. 8 keep h (in
  the ``"inverse"`` reading their product does not depend on it).
* eta (importance decay) and r (rate scale) have no values in the paper: eta = 0.99 and
  r = 0.01, so that the meta step ``alpha0*r*lambda`` is 0.03 of the way to theta_k with Table II's
  alpha_0 0.3, lambda 10 (r = 1/3, a full step, diverges: per-example inner steps of rate
  beta = 0.15 over 5 glances are too long a walk; see :class:`EMCLConfig`).

Ablations (EMCL Table IV and Fig. 3), ``variant``; the learners ``emcl-nopgd``, ``emcl-lr`` and
``emcl-si`` are the default ``emcl`` with this field alone changed:

* ``"emcl"``: the method above;
* ``"nopgd"``: no proximal step: plain gradient steps on the regularised inner loss of Eq. 6,
  ``theta <- theta - beta*(grad + lambda*h*(theta - theta_0))``;
* ``"lr"``: inner-LR modulation instead of explicit regularisation: ``theta <- theta - alpha*grad``
  with the meta rates alpha, no regulariser (in the ``"inverse"`` reading these are
  ``alpha0*r/(h+eps)``, up to 3e5 where h is near 0: it diverges at once);
* ``"si"``: EMCL-SI, importance from the gradient times the parameter *update* (as SI):
  ``Omega = |g * (theta_k - theta_0)|``.

``reference=True`` runs the same learner on the pure-PyTorch references of the ops
(:mod:`fastcl.ops.reference`): the tests compare the two, the benchmark times them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops import reference
from .lamaml import (ReplayMetaConfig, ReplayMetaLearner, _check_positive, _reject_unused_lr, is_plain_mlp, mlp_grads,
                     relu_mlp, warn_slow_path, why_not_plain_mlp)

__all__ = ["EMCL", "EMCLConfig", "EMCL_VARIANTS", "IMPORTANCE_SCALES"]

EMCL_VARIANTS = ("emcl", "nopgd", "lr", "si")
#: Eq. 8 readings, the modes of the fused op (:data:`fastcl.ops.LR_MODES`): "inverse",
#: ``alpha = alpha0 * r / (h + eps)`` (Eq. 8 from alpha_0 at every step: no compounding, no cap),
#: "paper" (as printed, compounding) and "stabilised" (capped at alpha_0).
LR_MODES = ("stabilised", "paper", "inverse")
#: the scale of ``L_t`` in Eq. 13: "sum" over the examples of b (Eq. 1), or their "mean"
IMPORTANCE_SCALES = ("sum", "mean")


@dataclass
class EMCLConfig(ReplayMetaConfig):
    """EMCL hyperparameters (Table II, MNIST Permutations; Many Permutations in brackets).

    Attributes:
        alpha0: alpha_0, initial meta learning rate (0.3 [0.15]).
        beta: beta, inner learning rate (0.15 [0.03]).
        lam: lambda, inner regularisation strength (10 [10]).
        gamma: gamma, scalar of the proximal step (0.3 [0.1]); the prox weight is gamma*lambda*h.
        eta: eta, decay of the importance moving average (Eq. 7; not given in the paper: 0.99).
        r: r, scale factor of the rates (Eq. 8; not given in the paper). Default 0.01: with
            ``lr_mode="inverse"`` the meta step is ``alpha0*r*lambda`` of the way from theta_0 to
            theta_k for every parameter (0.03 at Table II's alpha_0 0.3, lambda 10; 0.02 on Many
            Permutations keeps 0.03 there). The pre-v2 default was ``1/(alpha0*lambda)`` (1/3)
            with ``lr_mode="stabilised"``.
        lr_mode: "inverse" (default), "paper" (Eq. 8 as printed) or "stabilised"; see the module
            docstring.
        eps: added to h in Eq. 8's denominator.
        importance_norm: divide Omega by its mean over each tensor (default False: Eq. 13
            verbatim; see the module docstring).
        memory_size: reservoir of replayed examples; 0 (default): none, Algorithm 1 (Table II
            gives EMCL no memory; Sec. VI). ``emcl-replay``: 200 (500 on Many Permutations).
        importance_scale: "sum" (default; Eq. 1: L_t of Eq. 13 summed over the examples of b) or
            "mean" (their mean, the default before v4).
        uniform_importance: the inner loop uses h's mean over all parameters instead of h (an
            ablation: the importance keeps its scale but tells no parameters apart; variant "lr",
            whose inner loop has no h, ignores it).
        variant: "emcl", or an ablation: "nopgd", "lr", "si".
        inner_replay: with a memory, run the inner loop over the meta batch (incoming + replay,
            True) or over the incoming batch only (False; replay then only enters the importance).
            Without a memory (``memory_size=0``) both are the same.
        fused_inner: on a plain ReLU MLP (single head, float32 / float64), run the inner loop
            as one :func:`fastcl.ops.mlp_prox_steps_` call (True); False: per-example gradients
            by hand and one :func:`fastcl.ops.prox_sgd_` call per step (the same numbers to
            float rounding; kept for the speed comparison).
        reference: run on the pure-PyTorch references of the fused ops.
    """

    memory_size: int = 0
    alpha0: float = 0.3
    beta: float = 0.15
    lam: float = 10.0
    gamma: float = 0.3
    eta: float = 0.99
    r: float = 0.01
    lr_mode: str = "inverse"
    eps: float = 1e-8
    importance_norm: bool = False
    importance_scale: str = "sum"
    uniform_importance: bool = False
    variant: str = "emcl"
    inner_replay: bool = True
    fused_inner: bool = True
    reference: bool = False
    lr: float = 0.0  # unused (rejected): beta and alpha are the learning rates

    def __post_init__(self):
        super().__post_init__()
        _reject_unused_lr(self, "beta (inner) and alpha (meta, from alpha0)")
        _check_positive(self, "alpha0", "beta", "lam", "gamma", "r", "eps")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta (importance decay) must be in [0, 1], got {self.eta}")
        if self.lr_mode not in LR_MODES:
            raise ValueError(f"lr_mode must be one of {sorted(LR_MODES)}, got {self.lr_mode!r}")
        if self.importance_scale not in IMPORTANCE_SCALES:
            raise ValueError(f"importance_scale must be one of {IMPORTANCE_SCALES}, got {self.importance_scale!r}")
        if self.variant not in EMCL_VARIANTS:
            raise ValueError(f"variant must be one of {EMCL_VARIANTS}, got {self.variant!r}")


class EMCL(ReplayMetaLearner):
    """EMCL (see the module docstring) on the learner protocol.

    State beyond the model: the importance h and the meta rates alpha (one tensor per
    parameter), the reservoir memory and the generator; all in :meth:`state_dict`. The inner loop
    runs in place on a scratch copy of the model (its parameters are the fast weights).
    """

    config: EMCLConfig

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[EMCLConfig] = None, task_classes=None):
        config = config or EMCLConfig()
        super().__init__(model, num_classes, input_shape, config, task_classes)
        self.ops = reference if config.reference else ops
        self.lr_mode = reference.LR_MODES[config.lr_mode]
        self.importance = [torch.zeros_like(p) for p in self.params]
        self.meta_lrs = [torch.full_like(p, config.alpha0) for p in self.params]
        self.fast_model = copy.deepcopy(model)
        self.fast = [p for p in self.fast_model.parameters() if p.requires_grad]
        self.by_hand = is_plain_mlp(model)  # MLP gradients by hand (fastcl.algorithms.lamaml.mlp_grads)
        if not self.by_hand:
            warn_slow_path(self, why_not_plain_mlp(model), "gradients by hand and the fused inner loop")
        # the whole inner loop in one fused call (single head: the op has no logit mask; the op
        # puts a ReLU after every hidden Linear)
        self.fused_inner = (config.fused_inner and relu_mlp(model) and self.mask_table is None
                            and self.params[0].dtype in (torch.float32, torch.float64))
        # reused buffers: the inner-step gradients, the importance gradient and |g*theta| (no page
        # faults from fresh parameter-sized tensors at every step)
        self._inner_grads = [torch.empty_like(p) for p in self.params]
        self._meta_grads = [torch.empty_like(p) for p in self.params]
        self._scratch = [torch.empty_like(p) for p in self.params]
        self._uniform = [torch.empty_like(p) for p in self.params] if config.uniform_importance else []

    def grads(self, model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor, tasks: Tensor | int,
              need_loss: bool = True, out: Optional[list[Tensor]] = None) -> tuple[Optional[Tensor], list[Tensor]]:
        """Mean cross-entropy of ``model`` (whose parameters are ``params``) and its gradient
        (written into ``out`` on the by-hand path)."""
        if self.by_hand:
            return mlp_grads(model, params, x, y, None if self.mask_table is None else self.mask_table[tasks],
                             need_loss, out)
        loss = self.loss_of(model, x, y, tasks)
        return loss.detach(), list(torch.autograd.grad(loss, params))

    def loss_of(self, model: nn.Module, x: Tensor, y: Tensor, tasks: Tensor | int) -> Tensor:
        return F.cross_entropy(self.mask_logits(model(x), tasks), y)

    # -- the pieces of Algorithm 1 ------------------------------------------------------
    def importance_grads(self, bx: Tensor, by: Tensor, btasks: Tensor | int) -> tuple[Tensor, list[Tensor]]:
        """Mean meta loss at theta_0 and the gradient Omega is estimated from (Eq. 13):
        ``dL_t(theta_0; b)/dtheta_0`` with ``L_t`` the sum of the losses of the examples of b
        (Eq. 1; ``importance_scale="sum"``, the gradient of the mean times |b|) or their mean
        (``"mean"``); normalised per tensor to mean |g*theta| = 1 when ``importance_norm``."""
        loss, grads = self.grads(self.model, self.params, bx, by, btasks, out=self._meta_grads)
        if self.config.importance_scale == "sum":
            torch._foreach_mul_(grads, float(bx.shape[0]))
        if self.config.importance_norm:
            self._normalise_(grads, self.params)
        return loss, grads

    def inner_importance(self) -> list[Tensor]:
        """The h of the inner loop (the prox of Eq. 21, the regulariser of Eq. 6): h itself, or,
        with ``uniform_importance`` (an ablation), its mean over all parameters in every element."""
        if not self.config.uniform_importance:
            return self.importance
        total = sum(float(h.sum()) for h in self.importance)
        mean = total / sum(h.numel() for h in self.importance)
        for u in self._uniform:
            u.fill_(mean)
        return self._uniform

    @torch.no_grad()
    def _normalise_(self, grads: list[Tensor], by: list[Tensor]) -> None:
        """``grads[i] /= mean |grads[i] * by[i]|``: Omega = |g * by| then has mean 1 per tensor."""
        for g, t, s in zip(grads, by, self._scratch):
            torch.mul(g, t, out=s)
            g.div_(s.abs_().mean() + 1e-12)

    def inner_loop(self, bx: Tensor, by: Tensor, btasks: Tensor | int) -> None:
        """theta_k on the scratch model: one step per single example of ``bx``."""
        cfg, fast = self.config, self.fast
        h = self.inner_importance()
        with torch.no_grad():
            torch._foreach_copy_(fast, self.params)
            if self.fused_inner and cfg.variant in ("emcl", "si"):  # Eq. 16 + 21, all k steps
                self.ops.mlp_prox_steps_(fast, bx, by, self.params, h, cfg.beta, cfg.gamma * cfg.lam)
                return
        for i in range(bx.shape[0]):
            t = btasks if isinstance(btasks, int) else btasks[i:i + 1]
            _, grads = self.grads(self.fast_model, fast, bx[i:i + 1], by[i:i + 1], t, need_loss=False,
                                  out=self._inner_grads)
            with torch.no_grad():
                if cfg.variant in ("emcl", "si"):  # Eq. 16 + 21 in one fused call
                    self.ops.prox_sgd_(fast, grads, self.params, h, cfg.beta, cfg.gamma * cfg.lam)
                elif cfg.variant == "nopgd":  # gradient step on Eq. 6, regulariser included
                    total = torch._foreach_sub(fast, self.params)
                    torch._foreach_mul_(total, h)
                    torch._foreach_mul_(total, cfg.lam)
                    torch._foreach_add_(total, grads)  # grad + lambda*h*(theta - theta_0)
                    self.ops.prox_sgd_(fast, total, None, None, cfg.beta, 0.0)
                else:  # "lr": the meta rates as inner rates, no regulariser
                    torch._foreach_addcmul_(fast, self.meta_lrs, grads, value=-1.0)

    def meta_step(self, grads: list[Tensor]) -> None:
        """Eq. 10 with the rates of Eq. 8; importance by Eq. 7 and 13 (or SI's)."""
        cfg = self.config
        with torch.no_grad():
            if cfg.variant != "si":
                self.ops.emcl_meta_step_(self.params, self.fast, self.importance, self.meta_lrs, grads, cfg.lam,
                                         cfg.eta, cfg.r, self.lr_mode, cfg.alpha0, cfg.eps)
                return
            # EMCL-SI: Omega = |g * delta|, delta = theta_k - theta_0 (the update), same order as above
            delta = torch._foreach_sub(self.fast, self.params)
            step = torch._foreach_mul(self.meta_lrs, self.importance)
            torch._foreach_addcmul_(self.params, step, delta, value=cfg.lam)  # theta0 -= alpha*lam*h*(theta0-theta_k)
            if cfg.importance_norm:  # Omega normalised per tensor, as for EMCL
                self._normalise_(grads, delta)
            self.ops.taylor_importance_(self.importance, grads, delta, cfg.eta)
            inverse = torch._foreach_add(self.importance, cfg.eps)  # r / (h + eps), Eq. 8
            torch._foreach_reciprocal_(inverse)
            torch._foreach_mul_(inverse, cfg.r)
            if self.lr_mode == 0:  # paper: alpha * r / (h + eps)
                torch._foreach_mul_(self.meta_lrs, inverse)
                return
            if self.lr_mode == 1:  # stabilised: capped at alpha0
                torch._foreach_clamp_max_(inverse, 1.0)
            torch._foreach_mul_(inverse, cfg.alpha0)
            torch._foreach_copy_(self.meta_lrs, inverse)

    def meta_update(self, x, y, task, bx, by, btasks) -> float:
        loss, grads = self.importance_grads(bx, by, btasks)
        if self.config.inner_replay:
            self.inner_loop(bx, by, btasks)
        else:
            self.inner_loop(x, y, task)
        self.meta_step(grads)
        return float(loss.detach())

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["importance"] = [h.clone() for h in self.importance]
        state["meta_lrs"] = [a.clone() for a in self.meta_lrs]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for dst, src in zip(self.importance + self.meta_lrs, state["importance"] + state["meta_lrs"]):
                dst.copy_(src)
