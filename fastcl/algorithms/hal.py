"""Hindsight Anchor Learning (HAL; Chaudhry et al., "Using Hindsight to Anchor Past Knowledge in
Continual Learning"), with the Random-Anchors and Data-Anchors ablations of its Table 3.

Every step (Algorithm 1 of the paper):

1. a replay batch ``B_M`` of previous tasks joins the incoming batch ``B`` (as in ER-Ring);
2. the temporary step ``theta~ = theta - alpha * grad l(B u B_M)``;
3. the anchoring update (Eq. 5): ``theta <- theta - alpha * grad[ l(B u B_M)
   + lambda * sum_anchors ||f_theta(e) - f_theta~(e)||^2 ]`` with L2 over unnormalised logits.
   The anchoring gradient flows through ``theta~`` exactly (second order: ``theta~`` is built with
   ``create_graph``); ``first_order=True`` drops the Hessian term ``alpha * H0`` of Appendix D
   (``theta~`` then moves with ``theta`` as ``theta + const``);
4. the running mean embedding of the task (Eq. 8): ``phi_t <- beta*phi_t + (1-beta)*mean phi(B)``;
5. ``B`` joins the ring memory (last ``m`` examples per class per task).

At the end of a task: a copy of the model is fine-tuned on the memory of previous tasks
(``theta_M``), then one anchor per class of the task is learned by gradient *ascent* on Eq. 9,
``l(f_thetaM(e), y) - l(f_thetat(e), y) - gamma*||phi(e) - phi_t||^2``, and ``phi_t`` is discarded.

How the anchors are built (``anchor_procedure``):

* ``"code"`` (default; the authors' public code, which produced the paper's tables): theta_M is
  theta after 50 SGD steps (``finetune_steps``, batches of ``replay_batch``) on the memory of
  the previous tasks; every anchor starts from the mean image of its class in the task and
  takes ``k = 100`` Adam steps (lr ``anchor_lr`` 1e-3) on the negative of Eq. 9, clamped to
  the input range after each step.
* ``"paper"`` (the paper's text): anchors start random (``e_t <- rand()``, GetAnchors l. 7 of
  Algorithm 1: uniform in ``input_range``); theta_M comes from ONE EPOCH on the memory (Sec. 3,
  "we minimize the loss during one epoch on the episodic memory", GetAnchors l. 3-5: every
  stored example of the previous tasks once, shuffled, in batches of ``replay_batch``); Eq. 9
  is plain gradient ascent ``e <- e + alpha * grad`` with the step alpha (``lr``) for ``k``
  steps, not clamped.

The anchoring term of Eq. 5 (``anchor_reduction``): ``"mean"`` (default, the public code)
averages the squared logit changes over at most ``anchors_per_step`` (10) sampled past anchors
and the task's logits: Eq. 5's lambda divided by (anchors x logits), i.e. about 100x smaller
than the printed sum over those anchors; ``"sum"`` sums over the sampled anchors and logits;
``"sum-all"`` is Eq. 5 as printed: the sum over ALL past anchors (t x classes of them at task
t) and their logits. ``beta`` (the embedding decay) is not given in the paper; 0.5 is the value
of public HAL implementations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .. import ops
from .er import ERConfig, ERRing

__all__ = ["HAL", "HALConfig", "ANCHOR_KINDS", "ANCHOR_PROCEDURES", "ANCHOR_REDUCTIONS"]

#: How anchors are made: learned in hindsight (HAL), random noise, or a stored example (Table 3).
ANCHOR_KINDS = ("hindsight", "random", "data")
#: How hindsight anchors are learned: the authors' public code or the paper's text (module docstring).
ANCHOR_PROCEDURES = ("code", "paper")
#: The anchoring term of Eq. 5: mean / sum over the sampled anchors, or the sum over all of them.
ANCHOR_REDUCTIONS = ("mean", "sum", "sum-all")


@dataclass
class HALConfig(ERConfig):
    """HAL hyperparameters (defaults: the paper's grid choice for Permuted / Rotated MNIST).

    Attributes:
        lr: alpha, the step size of both steps of Eq. 5 and of the fine-tuning (0.1).
        lam: lambda, weight of the anchoring term of Eq. 5 (0.1).
        gamma: gamma, weight of the mean-embedding term of Eq. 9 (0.1).
        beta: beta, decay of the running mean embedding of Eq. 8 (0.5; not in the paper).
        k: gradient-ascent steps per anchor set (Eq. 9) (100).
        anchor_lr: Adam learning rate of the anchor ascent (1e-3; ``anchor_procedure="code"``).
        finetune_steps: SGD steps of the hindsight fine-tuning on the memory (50;
            ``anchor_procedure="code"``; ``"paper"`` takes one epoch on the memory instead).
        anchors_per_step: anchors sampled for the anchoring term of one step (10; not used by
            ``anchor_reduction="sum-all"``).
        anchor_procedure: ``"code"`` (the authors' public code: class-mean start, Adam, clamp,
            ``finetune_steps`` steps) or ``"paper"`` (random start, ascent with step ``lr``, one
            epoch on the memory); see the module docstring.
        first_order: the first-order anchoring gradient of Appendix D instead of the exact one.
        anchors: "hindsight" (HAL), "random" (Random-Anchors) or "data" (Data-Anchors).
        input_range: the (low, high) range anchors are kept in.
        anchor_reduction: "mean" (default) averages the squared logit changes over the sampled
            anchors and the logits, as the public HAL code does; "sum" sums them over the
            sampled anchors; "sum-all" is Eq. 5 as printed (the sum over every past anchor).
            "mean" is Eq. 5 with lambda / (anchors x logits): 100x smaller than "sum" with 10
            anchors of 10 logits, 10 t x 10 smaller than "sum-all" at task t of 10-class tasks.
            With the paper's lambda = 0.1 the sum made the exact update diverge here (Permuted
            MNIST, MLP 256-256: 11% accuracy after 6 tasks), while "mean" beats ER-Ring.
    """

    lam: float = 0.1
    gamma: float = 0.1
    beta: float = 0.5
    k: int = 100
    anchor_lr: float = 1e-3
    finetune_steps: int = 50
    anchors_per_step: int = 10
    first_order: bool = False
    anchors: str = "hindsight"
    input_range: tuple[float, float] = (0.0, 1.0)
    anchor_reduction: str = "mean"
    anchor_procedure: str = "code"

    def __post_init__(self):
        super().__post_init__()
        for name in ("lam", "gamma", "anchor_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        for name in ("k", "finetune_steps", "anchors_per_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.anchor_reduction not in ANCHOR_REDUCTIONS:
            raise ValueError(f"anchor_reduction must be one of {ANCHOR_REDUCTIONS}, got {self.anchor_reduction!r}")
        if self.anchor_procedure not in ANCHOR_PROCEDURES:
            raise ValueError(f"anchor_procedure must be one of {ANCHOR_PROCEDURES}, got {self.anchor_procedure!r}")
        if self.anchors not in ANCHOR_KINDS:
            raise ValueError(f"anchors must be one of {ANCHOR_KINDS}, got {self.anchors!r}")
        lo, hi = self.input_range
        if not lo < hi:
            raise ValueError(f"input_range must be (low, high) with low < high, got {self.input_range}")


_HEAD_NAMES = ("head", "classifier", "linear", "fc")


def split_model(model: nn.Module) -> tuple[nn.Module | Any, nn.Module]:
    """(phi, w): the featurizer and the classifier of ``model``, with ``model(x) == w(phi(x))``.

    ``phi`` is ``model.features`` and ``w`` the module named ``head``, ``classifier``, ``linear``
    or ``fc`` when the model has them; an ``nn.Sequential`` splits before its last module. HAL
    runs ``phi`` once per batch and reuses it for the logits and the mean embedding of Eq. 8.
    """
    if hasattr(model, "features") and callable(model.features):
        for name in _HEAD_NAMES:
            head = getattr(model, name, None)
            if isinstance(head, nn.Module):
                return model.features, head
    elif isinstance(model, nn.Sequential) and len(model) > 1:
        children = list(model.children())
        return nn.Sequential(*children[:-1]), children[-1]  # shares the model's modules
    raise TypeError("HAL needs the model split into a feature extractor and a classifier: give it a "
                    "`features(x)` method and a `head` (or `classifier`, `linear`, `fc`) module, or make "
                    "it an nn.Sequential whose last module is the classifier")


def _check_split(model: nn.Module, features, head, input_shape: Sequence[int]) -> None:
    """``model(x) == head(features(x))`` on a probe batch (eval mode: no statistics change)."""
    p = next(model.parameters())
    probe = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0)).to(p)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            same = torch.allclose(model(probe), head(features(probe)), rtol=1e-4, atol=1e-5)
    finally:
        model.train(was)
    if not same:
        raise TypeError("HAL split the model into features and head, but head(features(x)) != model(x): "
                        "give the model a `features(x)` method and a `head` module that compose to forward")


class HAL(ERRing):
    """Hindsight Anchor Learning on top of ER-Ring (see the module docstring)."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[HALConfig] = None, task_classes=None):
        config = config or HALConfig()
        if not isinstance(config, HALConfig):
            raise TypeError(f"config must be a HALConfig, got {type(config).__name__}")
        super().__init__(model, num_classes, input_shape, config, task_classes)
        self.features, self.head = split_model(model)
        _check_split(model, self.features, self.head, self.input_shape)
        dtype = self.params[0].dtype
        n_anchor = config.num_tasks * num_classes
        # one anchor slot per (task, class); anchor_mask marks the learned ones
        self.anchor_x = torch.zeros((n_anchor, *self.input_shape), dtype=dtype, device=self.device)
        self.anchor_mask = torch.zeros(n_anchor, dtype=torch.bool, device=self.device)
        # a generator of its own, so that HAL with lam = 0 replays exactly as ER-Ring does
        self.anchor_generator = torch.Generator(device=self.device).manual_seed(self.seed + 7919)
        self._past: Optional[tuple[int, Tensor]] = None  # (task, learned anchor rows before it)
        self._reset_task_stats()

    # ------------------------------------------------------------------ task statistics
    def _reset_task_stats(self) -> None:
        self.phi_t: Optional[Tensor] = None  # Eq. 8 running mean embedding (None = zero)
        self.class_sum = torch.zeros((self.num_classes, *self.input_shape), dtype=self.params[0].dtype,
                                     device=self.device)
        self.class_count = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)

    def _begin(self, task: int) -> None:
        if task != self.current_task:
            self._reset_task_stats()
        super()._begin(task)

    # ------------------------------------------------------------------ the anchoring step
    def _anchor_batch(self, task: int) -> Optional[tuple[Tensor, Tensor]]:
        """At most ``anchors_per_step`` learned anchors of tasks before ``task`` (every one with
        ``anchor_reduction="sum-all"``, Eq. 5 as printed): (e, task ids)."""
        every = self.config.anchor_reduction == "sum-all"
        if self.config.lam == 0 or (self.config.anchors_per_step == 0 and not every):
            return None
        if self._past is None or self._past[0] != task:  # anchors change only at task ends
            self._past = (task, self.anchor_mask[: task * self.num_classes].nonzero().flatten())
        past = self._past[1]
        if past.numel() == 0:
            return None
        if not every and past.numel() > self.config.anchors_per_step:
            pick = torch.randperm(past.numel(), generator=self.anchor_generator, device=self.device)
            past = past[pick[: self.config.anchors_per_step]]
        return self.anchor_x[past], past // self.num_classes

    def _masked(self, out: Tensor, tasks) -> Tensor:
        return self.mask_logits(out, tasks, 0.0)  # L2 over the task's own logits

    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        xb, yb, tb = self._joined_batch(x, y, task)
        feats = self.features(xb)  # phi(B u B_M): the logits and Eq. 8's phi(B) both use it
        loss = F.cross_entropy(self.mask_logits(self.head(feats), tb), yb)
        anchors = self._anchor_batch(task)
        if anchors is None:
            self.sgd_step(loss)
        else:
            e, et = anchors
            if self.config.first_order:
                g, anchor_grads = self._anchor_grad_first_order(loss, e, et)
            else:
                g, anchor_grads = self._anchor_grad_exact(loss, e, et)
            # theta <- theta - alpha * (g + g_anchor): one fused list step per gradient term
            # instead of materialising their sum
            with torch.no_grad():
                ops.prox_sgd_(self.params, [gi.detach() for gi in g], None, None, self.config.lr, 0.0)
                for grads in anchor_grads:
                    used = [(p, ga) for p, ga in zip(self.params, grads) if ga is not None]
                    if used:
                        ops.prox_sgd_([p for p, _ in used], [ga for _, ga in used], None, None,
                                      self.config.lr, 0.0)
        with torch.no_grad():
            self._update_task_stats(feats[: x.shape[0]], y, x)
        self.memory.add(x.detach(), y, task)
        return float(loss.detach())

    def _anchor_term(self, now: Tensor, tilde: Tensor) -> Tensor:
        sq = (now - tilde).pow(2)
        return self.config.lam * (sq.mean() if self.config.anchor_reduction == "mean" else sq.sum())

    def _anchor_grad_exact(self, loss: Tensor, e: Tensor, et: Tensor):
        """Gradient of lambda * anchor term, exact: through theta~ = theta - alpha*g(theta)."""
        # grad of l(B u B_M), kept differentiable (create_graph) for the second-order term
        g = torch.autograd.grad(loss, self.params, create_graph=True)
        # theta~ = theta - alpha*g: the fused differentiable step (gradients flow to theta and g)
        tilde = ops.prox_sgd(self.params, list(g), None, None, self.config.lr, 0.0)
        out_tilde = functional_call(self.model, dict(zip(self.param_names, tilde)), (e,))
        term = self._anchor_term(self._masked(self.model(e), et), self._masked(out_tilde, et))
        # grad of Eq. 5 = grad l + lambda * grad(anchor term): l's gradient is g already, so only
        # the anchor term is back-propagated (through theta~ and through g)
        return g, [torch.autograd.grad(term, self.params, allow_unused=True)]

    def _anchor_grad_first_order(self, loss: Tensor, e: Tensor, et: Tensor):
        """Gradient of lambda * anchor term with d theta~ / d theta = I (Appendix D, first order).

        theta~ lives in a scratch copy of the model (no functional_call, no autograd through the
        step): the term's gradient at theta plus its gradient at theta~ is the first-order one.
        """
        g = torch.autograd.grad(loss, self.params)
        twin, twin_params = self._twin()
        with torch.no_grad():
            for tp, p in zip(twin_params, self.params):
                tp.copy_(p)
            ops.prox_sgd_(twin_params, list(g), None, None, self.config.lr, 0.0)
        term = self._anchor_term(self._masked(self.model(e), et), self._masked(twin(e), et))
        n = len(self.params)
        grads = torch.autograd.grad(term, self.params + twin_params, allow_unused=True)
        return g, [grads[:n], grads[n:]]  # the term's gradient at theta and at theta~

    def _twin(self):
        if getattr(self, "_twin_model", None) is None:
            self._twin_model = copy.deepcopy(self.model)
            self._twin_params = [p for p in self._twin_model.parameters() if p.requires_grad]
        self._twin_model.train(self.model.training)
        return self._twin_model, self._twin_params

    @torch.no_grad()
    def _update_task_stats(self, feats: Tensor, y: Tensor, x: Tensor) -> None:
        """Eq. 8 from ``feats`` = phi(B), and the per-class input sums the anchors start from."""
        emb = feats.mean(0)
        b = self.config.beta
        self.phi_t = (1 - b) * emb if self.phi_t is None else b * self.phi_t + (1 - b) * emb
        self.class_sum.index_add_(0, y, x.to(self.class_sum.dtype))
        self.class_count += torch.bincount(y, minlength=self.num_classes)

    # ------------------------------------------------------------------ anchors in hindsight
    def _task_labels(self, task: int) -> list[int]:
        if self.task_classes is not None:
            return list(self.task_classes[task])
        return list(range(self.num_classes))

    def _sync_twin(self):
        """The scratch copy of the model, set to theta (parameters and buffers)."""
        twin, tps = self._twin()
        with torch.no_grad():
            for tp, p in zip(tps, self.params):
                tp.copy_(p)
            for tb, mb in zip(twin.buffers(), self.model.buffers()):
                tb.copy_(mb)
        return twin, tps

    def _finetune_batches(self, task: int):
        """The memory batches of the hindsight fine-tuning: ``finetune_steps`` random batches of
        ``replay_batch`` (``"code"``), or one shuffled epoch over every stored example of tasks
        < task in batches of ``replay_batch`` (``"paper"``)."""
        if self.config.anchor_procedure == "code":
            for _ in range(self.config.finetune_steps):
                yield self.memory.sample(self.config.replay_batch, tasks=range(task), generator=self.anchor_generator,
                                         replacement=self.config.replay_replacement)
            return
        mx, my, mt = self._stored(task)
        order = torch.randperm(len(my), generator=self.anchor_generator, device=self.device)
        for i in range(0, len(order), self.config.replay_batch):
            idx = order[i:i + self.config.replay_batch]
            yield mx[idx], my[idx], mt[idx]

    def _stored(self, task: int) -> tuple[Tensor, Tensor, Tensor]:
        """Every filled ring slot of tasks < ``task``: (x, labels, task ids). Row
        ``(t * C + c) * m + r`` holds the r-th of class c of task t, filled while r < count."""
        m, C = self.memory.per_class, self.num_classes
        filled = self.memory.counts[:task].clamp(max=m)  # [task, C]
        slot = torch.arange(m, device=self.device)
        mask = slot.view(1, 1, m) < filled.unsqueeze(-1)  # [task, C, m]
        rows = mask.flatten().nonzero().flatten()
        return self.memory.data[rows], (rows // m) % C, rows // (m * C)

    def _finetune_twin(self, task: int) -> nn.Module:
        """theta_M in the scratch copy: theta after SGD on the memory of tasks < task (see
        :meth:`_finetune_batches`); the model itself is untouched."""
        twin, tps = self._sync_twin()
        if task == 0 or not any(self.memory.inserted[:task]):
            return twin
        for mx, my, mt in self._finetune_batches(task):
            out = self.mask_logits(twin(mx), mt)
            grads = torch.autograd.grad(F.cross_entropy(out, my), tps)
            with torch.no_grad():
                ops.prox_sgd_(tps, list(grads), None, None, self.config.lr, 0.0)
        return twin

    def _finetuned_params(self, task: int) -> dict[str, Tensor]:
        """theta_M as a dict of parameter copies (see :meth:`_finetune_twin`)."""
        twin = self._finetune_twin(task)
        return {n: p.detach().clone() for n, p in twin.named_parameters() if p.requires_grad}

    def _initial_anchors(self, task: int, labels: list[int]) -> Tensor:
        lo, hi = self.config.input_range
        idx = torch.tensor(labels, device=self.device)
        count = self.class_count[idx].clamp(min=1).to(self.class_sum.dtype)
        means = self.class_sum[idx] / count.view(-1, *([1] * len(self.input_shape)))
        if self.config.anchors == "random" or (self.config.anchors == "hindsight"
                                               and self.config.anchor_procedure == "paper"):
            # uniform noise in the input range (the paper's rand(), GetAnchors l. 7)
            u = torch.rand((len(labels), *self.input_shape), generator=self.anchor_generator,
                           device=self.device, dtype=means.dtype)
            return lo + (hi - lo) * u
        if self.config.anchors == "data":
            # a stored example of the class and task: ring rows of (task, c) that are filled
            m = self.memory.per_class
            rows = []
            for j, c in enumerate(labels):
                filled = int(self.memory.counts[task, c].clamp(max=m))
                if filled == 0:
                    rows.append(means[j])
                    continue
                r = int(torch.randint(filled, (1,), generator=self.anchor_generator, device=self.device))
                rows.append(self.memory.data[(task * self.num_classes + c) * m + r])
            return torch.stack(rows).to(means.dtype)
        return means.clamp(lo, hi)

    def _reserve_anchors(self, num_tasks: int) -> None:
        """Grow the anchor slots to ``num_tasks`` tasks (``config.num_tasks`` only preallocates)."""
        extra = num_tasks * self.num_classes - self.anchor_mask.numel()
        if extra > 0:
            self.anchor_x = torch.cat([self.anchor_x, self.anchor_x.new_zeros((extra, *self.input_shape))])
            self.anchor_mask = torch.cat([self.anchor_mask, self.anchor_mask.new_zeros(extra)])

    def build_anchors(self, task: int) -> Tensor:
        """Learn the anchors of ``task`` (Eq. 9) and store them; returns them ``[C, *input_shape]``."""
        self._reserve_anchors(task + 1)
        labels = self._task_labels(task)
        e = self._initial_anchors(task, labels)
        if self.config.anchors == "hindsight" and self.config.k > 0:
            twin = self._finetune_twin(task)  # theta_M
            y = torch.tensor(labels, device=self.device)
            phi_t = self.phi_t
            lo, hi = self.config.input_range
            e = e.clone().requires_grad_(True)
            # Adam (Kingma & Ba; beta1 0.9, beta2 0.999, eps 1e-8) written out: torch.optim's first
            # use imports torch._dynamo, a one-off 2 s that would dominate HAL's anchor time
            adam_m, adam_v = torch.zeros_like(e), torch.zeros_like(e)
            was = self.model.training
            self.model.eval()
            twin.eval()
            frozen = self.params + self._twin_params
            for p in frozen:  # the ascent moves e only: no gradient into either model
                p.requires_grad_(False)
            try:
                step = 0
                for _ in range(self.config.k):
                    out_m = self.mask_logits(twin(e), task)
                    emb = self.features(e)  # phi at theta_t, shared by f_theta_t and the Eq. 9 term
                    out_t = self.mask_logits(self.head(emb), task)
                    # Eq. 9, summed over the task's anchors; ascent = minimise its negative
                    forgetting = (F.cross_entropy(out_m, y, reduction="sum")
                                  - F.cross_entropy(out_t, y, reduction="sum"))
                    objective = forgetting
                    if phi_t is not None and self.config.gamma > 0:
                        objective = objective - self.config.gamma * (emb - phi_t).pow(2).sum()
                    (g_e,) = torch.autograd.grad(-objective, e)
                    if self.config.anchor_procedure == "paper":  # Eq. 9: e <- e + alpha * grad
                        with torch.no_grad():
                            e.sub_(g_e, alpha=self.config.lr)
                        continue
                    with torch.no_grad():
                        step += 1
                        adam_m.mul_(0.9).add_(g_e, alpha=0.1)
                        adam_v.mul_(0.999).addcmul_(g_e, g_e, value=0.001)
                        denom = (adam_v / (1 - 0.999 ** step)).sqrt_().add_(1e-8)
                        e.addcdiv_(adam_m, denom, value=-self.config.anchor_lr / (1 - 0.9 ** step))
                        e.clamp_(lo, hi)
            finally:
                self.model.train(was)
                for p in frozen:
                    p.requires_grad_(True)
            e = e.detach()
        rows = torch.tensor([task * self.num_classes + c for c in labels], device=self.device)
        self.anchor_x[rows] = e.to(self.anchor_x.dtype)
        self.anchor_mask[rows] = True
        self._past = None
        return e

    def end_task(self, task: int) -> None:
        self._check_task(task)
        self.memory.reserve(task + 1)  # a task none of whose batches reached the memory: its ring is empty
        self._reserve_anchors(task + 1)
        self.build_anchors(task)
        self._reset_task_stats()  # discard phi_t

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({
            "anchor_x": self.anchor_x.clone(),
            "anchor_mask": self.anchor_mask.clone(),
            "anchor_generator": self.anchor_generator.get_state(),
            "phi_t": None if self.phi_t is None else self.phi_t.clone(),
            "class_sum": self.class_sum.clone(),
            "class_count": self.class_count.clone(),
        })
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ax, am = state["anchor_x"], state["anchor_mask"]
        if ax.shape[1:] != self.anchor_x.shape[1:] or am.shape != ax.shape[:1]:
            raise ValueError(f"state['anchor_x'] {tuple(ax.shape)} / state['anchor_mask'] {tuple(am.shape)} do not "
                             f"fit this learner's anchors [*, {', '.join(map(str, self.input_shape))}]")
        super().load_state_dict(state)
        # the anchor slots grow with the tasks: take the state's size
        self.anchor_x = ax.to(self.anchor_x).clone()
        self.anchor_mask = am.to(self.anchor_mask).clone()
        self._past = None
        self.anchor_generator.set_state(state["anchor_generator"])
        self.phi_t = None if state["phi_t"] is None else state["phi_t"].clone()
        self.class_sum = state["class_sum"].clone()
        self.class_count = state["class_count"].clone()
