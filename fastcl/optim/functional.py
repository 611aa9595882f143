"""Functional optimizer steps on lists of (stacked) tensors, for inner loops that keep their own
state: no ``torch.optim.Optimizer`` object, so the T task learners of a stacked ``[T, *shape]``
tensor step independently (every operation is elementwise).

Used by the CTS / Reptile inner loops (:func:`fastcl.algorithms.cts.inner_update_` passes its
config's fields) and by the CTS task families' test-time adaptation (:mod:`fastcl.data.cts_tasks`),
which is why it lives below both.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["INNER_OPTIMIZERS", "inner_step_"]

#: the optimizers :func:`inner_step_` runs
INNER_OPTIMIZERS = ("sgd", "momentum", "adam")


def inner_step_(params: list[Tensor], grads: list[Tensor], state: dict[str, Any], optimizer: str, lr: float,
                momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0) -> None:
    """One optimizer step on ``params``, in place, with the state kept in ``state``.

    Args:
        params: tensors updated in place (stacked task learners step independently).
        grads: their gradients.
        state: the optimizer's state, created on first use: ``"buf"`` (momentum: PyTorch's SGD
            momentum, the first buffer is the gradient) or ``"m"``, ``"v"``, ``"step"`` (Adam).
        optimizer: ``"sgd"``, ``"momentum"`` or ``"adam"``.
        lr: step size.
        momentum: the momentum factor (``"momentum"``).
        betas, eps: Adam's.
        weight_decay: L2 penalty added to the gradients.
    """
    if optimizer not in INNER_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, got {optimizer!r}")
    with torch.no_grad():
        if weight_decay:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if optimizer == "sgd":
            torch._foreach_add_(params, grads, alpha=-lr)
        elif optimizer == "momentum":
            buf = state.get("buf")
            if buf is None:
                buf = state["buf"] = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(buf, momentum)
                torch._foreach_add_(buf, grads)
            torch._foreach_add_(params, buf, alpha=-lr)
        else:
            b1, b2 = betas
            if "m" not in state:
                state["m"] = [torch.zeros_like(p) for p in params]
                state["v"] = [torch.zeros_like(p) for p in params]
                state["step"] = 0
            state["step"] += 1
            t = state["step"]
            torch._foreach_lerp_(state["m"], grads, 1 - b1)
            torch._foreach_mul_(state["v"], b2)
            torch._foreach_addcmul_(state["v"], grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(state["v"])
            torch._foreach_div_(denom, math.sqrt(1 - b2 ** t))
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, state["m"], denom, value=-lr / (1 - b1 ** t))
