"""fastcl's fused updates as ``torch.optim`` optimizers, for a user's own training loop.

Each ``step`` updates every parameter of a param group that has a gradient with one fused call
per (device, dtype) (:func:`fastcl.ops.prox_sgd_`), instead of one kernel per tensor:

* :class:`SGD`: ``theta <- theta - lr * g``.
* :class:`ProxSGD`: the proximal, importance-weighted step of EMCL (Eq. 16, 21), ``theta <-
  (theta - lr*g + prox*h*theta0) / (prox*h + 1)``, with the anchor ``theta0`` and the importance
  ``h`` kept per parameter in the optimizer's state; :meth:`ProxSGD.set_anchors` moves the anchors
  to the current parameters and :meth:`ProxSGD.accumulate_importance` is EMCL's Taylor importance
  (Eq. 7, 13: ``h <- decay*h + (1-decay)*|g*theta|``).

Both follow ``torch.optim``'s conventions: param groups (``lr`` and, for ProxSGD, ``prox`` per
group), ``zero_grad``, ``state_dict`` / ``load_state_dict`` (anchors and importance included), a
``closure``. Example::

    opt = fastcl.optim.ProxSGD(model.parameters(), lr=0.1, prox=1.0)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.accumulate_importance(decay=0.9)   # optional: Eq. 7 / 13
        opt.step()
    opt.set_anchors()                          # e.g. at a task boundary
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from fastcl import ops

__all__ = ["SGD", "ProxSGD"]


def _check_rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def _with_grads(group: dict) -> list[Tensor]:
    """The parameters of ``group`` that have a gradient (a sparse one is an error)."""
    out = []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("fastcl.optim does not support sparse gradients; use torch.optim.SparseAdam")
        out.append(p)
    return out


def _by_device_dtype(params: list[Tensor]) -> Iterable[list[Tensor]]:
    """``params`` split by (device, dtype): one fused call takes tensors of one device and dtype."""
    groups: dict[tuple, list[Tensor]] = defaultdict(list)
    for p in params:
        groups[(p.device, p.dtype)].append(p)
    return groups.values()


class _FusedOptimizer(torch.optim.Optimizer):
    """``step`` = a closure, then :meth:`_update` on each group's (device, dtype) buckets."""

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for bucket in _by_device_dtype(_with_grads(group)):
                self._update(group, bucket)
        return loss

    def _update(self, group: dict, params: list[Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SGD(_FusedOptimizer):
    """Plain SGD, ``theta <- theta - lr * g``, one fused call per param group (and device, dtype).

    Args:
        params: an iterable of parameters or of param-group dicts (as for ``torch.optim.SGD``).
        lr: step size, finite and >= 0 (per group as ``lr``).
    """

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": _check_rate("lr", lr)})

    def add_param_group(self, param_group: dict) -> None:
        if "lr" in param_group:
            param_group["lr"] = _check_rate("lr", param_group["lr"])
        super().add_param_group(param_group)

    def _update(self, group: dict, params: list[Tensor]) -> None:
        ops.prox_sgd_(params, [p.grad for p in params], None, None, _check_rate("lr", group["lr"]), 0.0)


class ProxSGD(_FusedOptimizer):
    """EMCL's proximal, importance-weighted SGD step (Eq. 16, closed form Eq. 21).

    ``theta <- (theta - lr*g + prox*h*theta0) / (prox*h + 1)``: with ``prox = gamma * lambda`` in
    the paper's symbols, a parameter of importance ``h`` is pulled towards its anchor ``theta0``,
    the more the more important it is; ``prox = 0`` is plain SGD. Per parameter the state holds
    ``anchor`` (theta0; the parameter's value when the optimizer was built, or at the last
    :meth:`set_anchors`) and ``importance`` (h; ``initial_importance`` everywhere until
    :meth:`accumulate_importance` or :meth:`set_importance` changes it).

    Args:
        params: an iterable of parameters or of param-group dicts.
        lr: step size gamma, finite and >= 0 (per group as ``lr``).
        prox: the proximal strength gamma*lambda, finite and >= 0 (per group as ``prox``).
        initial_importance: the starting value of every h, finite and >= 0.
    """

    def __init__(self, params, lr: float, prox: float = 0.0, initial_importance: float = 1.0):
        self._h0 = _check_rate("initial_importance", initial_importance)
        super().__init__(params, {"lr": _check_rate("lr", lr), "prox": _check_rate("prox", prox)})

    def add_param_group(self, param_group: dict) -> None:
        for key in ("lr", "prox"):
            if key in param_group:
                param_group[key] = _check_rate(key, param_group[key])
        super().add_param_group(param_group)
        for p in param_group["params"]:
            self._init_state(p)

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if "anchor" not in state:
            state["anchor"] = p.detach().clone(memory_format=torch.preserve_format)
            state["importance"] = torch.full_like(p, self._h0, memory_format=torch.preserve_format)
        return state

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def set_anchors(self) -> None:
        """theta0 <- the current parameters (e.g. at the start of an inner loop or a task)."""
        for p in self._params():
            self._init_state(p)["anchor"].copy_(p)

    @torch.no_grad()
    def set_importance(self, value: float) -> None:
        """h <- ``value`` everywhere (finite, >= 0)."""
        value = _check_rate("value", value)
        for p in self._params():
            self._init_state(p)["importance"].fill_(value)

    @torch.no_grad()
    def accumulate_importance(self, decay: float) -> None:
        """EMCL's Taylor importance (Eq. 7, 13) from the current gradients:
        ``h <- decay*h + (1-decay)*|g*theta|`` for every parameter that has a gradient.

        Args:
            decay: in [0, 1].
        """
        decay = _check_rate("decay", decay)
        if decay > 1:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        for group in self.param_groups:
            for bucket in _by_device_dtype(_with_grads(group)):
                ops.taylor_importance_([self._init_state(p)["importance"] for p in bucket],
                                       [p.grad for p in bucket], bucket, decay)

    def _update(self, group: dict, params: list[Tensor]) -> None:
        prox = _check_rate("prox", group["prox"])
        states = [self._init_state(p) for p in params]
        anchors = [s["anchor"] for s in states] if prox > 0 else None
        importance = [s["importance"] for s in states] if prox > 0 else None
        ops.prox_sgd_(params, [p.grad for p in params], anchors, importance, _check_rate("lr", group["lr"]), prox)
