"""fastcl's fused operators: one call updates every tensor of a model.

Each op is a PyTorch custom operator (``torch.ops.fastcl.<name>``) with a C++ CPU kernel and
a CUDA kernel, and a pure-PyTorch reference of the same signature in
:mod:`fastcl.ops.reference` (the specification). The functions here call the fused op when
the extension is loaded and the reference otherwise (see :func:`backend`).

In-place ops check every argument before writing any element: a rejected call changes
nothing. Errors are ``ValueError`` / ``TypeError`` naming the argument. They keep PyTorch's
contracts for in-place ops (docs/op-contracts.md): with grad mode on they refuse to write a
tensor that requires grad (call them under ``torch.no_grad()``), they bump the version counter of
what they write, every float argument must be finite, and a written tensor may share memory with
another argument only as the op's aliasing rules allow.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import reference
from ._load import HAVE_EXT, backend, cpu_isa, cuda_built, load_error
from ._load import set_cpu_isa, supported_cpu_isas  # noqa: F401  (in __all__ below)
from .reference import LR_MODES

__all__ = [
    "backend",
    "cpu_isa",
    "set_cpu_isa",
    "supported_cpu_isas",
    "cuda_built",
    "load_error",
    "prox_sgd_",
    "prox_sgd",
    "taylor_importance_",
    "emcl_meta_step_",
    "trajectory_shift_",
    "mlp_prox_steps_",
    "ring_insert_",
    "ring_sample",
    "ring_sample_rows",
    "reservoir_insert_",
    "reference",
    "LR_MODES",
]

if HAVE_EXT:
    from . import _registrations  # noqa: F401  fake kernels, autograd, vmap

    _ops = torch.ops.fastcl


def _lr_mode(lr_mode):
    if isinstance(lr_mode, str):
        if lr_mode not in LR_MODES:
            raise ValueError(f"lr_mode must be 0 (paper), 1 (stabilised) or 2 (inverse), got {lr_mode!r}")
        return LR_MODES[lr_mode]
    return lr_mode


def _dispatchable(lists, reals=(), ints=(), bools=(), optional=(), functorch_rule=False) -> bool:
    """Whether the fused op can take these arguments: every list a non-empty list / tuple
    (the dispatcher cannot dispatch an op with no tensor argument) and every scalar of the
    type of its schema. Anything else goes to the reference, which raises the documented
    ValueError / TypeError naming the argument, or does nothing on valid empty lists.

    Under torch.func transforms (grad, vmap, jacrev, ...) an op without a rule for them
    (``functorch_rule``: trajectory_shift_ has a vmap rule) runs as its reference: a custom
    op's autograd formula does not compose with torch.func, and the reference is the same
    expression in plain PyTorch, which does."""
    if not HAVE_EXT:
        return False
    if not functorch_rule and not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        return False
    for x in lists:
        if not isinstance(x, (list, tuple)) or not x:
            return False
    for x in optional:
        if x is not None and not isinstance(x, (list, tuple)):
            return False
    for x in reals:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return False
    for x in ints:
        if isinstance(x, bool) or not isinstance(x, int):
            return False
    for x in bools:
        if not isinstance(x, bool):
            return False
    return True


def prox_sgd_(params: Sequence[Tensor], grads: Sequence[Tensor], anchors: Optional[Sequence[Tensor]],
              importance: Optional[Sequence[Tensor]], lr: float, prox: float = 0.0) -> None:
    """Fused proximal SGD step in place (EMCL Eq. 16, 17, 21); see :func:`reference.prox_sgd_`."""
    if not _dispatchable((params, grads), (lr, prox), optional=(anchors, importance)):
        return reference.prox_sgd_(params, grads, anchors, importance, lr, prox)
    _ops.prox_sgd_(params, grads, anchors, importance, lr, prox)


def prox_sgd(params: Sequence[Tensor], grads: Sequence[Tensor], anchors: Optional[Sequence[Tensor]],
             importance: Optional[Sequence[Tensor]], lr: float, prox: float = 0.0) -> list[Tensor]:
    """Fused out-of-place, differentiable proximal SGD step; see :func:`reference.prox_sgd`."""
    if not _dispatchable((params, grads), (lr, prox), optional=(anchors, importance)):
        return reference.prox_sgd(params, grads, anchors, importance, lr, prox)
    return _ops.prox_sgd(params, grads, anchors, importance, lr, prox)


def taylor_importance_(importance: Sequence[Tensor], grads: Sequence[Tensor], params: Sequence[Tensor],
                       decay: float) -> None:
    """Fused Taylor importance moving average (EMCL Eq. 7, 13); see :func:`reference.taylor_importance_`."""
    if not _dispatchable((importance, grads, params), (decay,)):
        return reference.taylor_importance_(importance, grads, params, decay)
    _ops.taylor_importance_(importance, grads, params, decay)


def emcl_meta_step_(params, fast_params, importance, meta_lrs, grads, lam: float, decay: float, r: float,
                    lr_mode: int | str = 0, alpha0: float = 0.0, eps: float = 0.0) -> None:
    """Fused EMCL meta step (Eq. 10, 8, 7, 13); ``lr_mode`` 0/"paper", 1/"stabilised" or 2/"inverse".

    See :func:`reference.emcl_meta_step_` for the exact per-element order and the three modes.
    """
    lr_mode = _lr_mode(lr_mode)
    if not _dispatchable((params, fast_params, importance, meta_lrs, grads), (lam, decay, r, alpha0, eps),
                         (lr_mode,)):
        return reference.emcl_meta_step_(params, fast_params, importance, meta_lrs, grads, lam, decay, r,
                                         lr_mode, alpha0, eps)
    _ops.emcl_meta_step_(params, fast_params, importance, meta_lrs, grads, lam, decay, r, lr_mode, alpha0, eps)


def trajectory_shift_(phi: Sequence[Tensor], thetas: Sequence[Tensor], meta_lr: float, shift: bool = True) -> None:
    """Fused Reptile meta step + trajectory shift (CTS Alg. 2, l. 11-13); see :func:`reference.trajectory_shift_`."""
    if not _dispatchable((phi, thetas), (meta_lr,), (), (shift,), functorch_rule=True):
        return reference.trajectory_shift_(phi, thetas, meta_lr, shift)
    _ops.trajectory_shift_(phi, thetas, meta_lr, shift)


def mlp_prox_steps_(params: Sequence[Tensor], x: Tensor, y: Tensor, anchors: Optional[Sequence[Tensor]],
                    importance: Optional[Sequence[Tensor]], lr: float, prox: float = 0.0) -> None:
    """Fused EMCL inner loop of a ReLU MLP in place: one proximal SGD step per example of ``x``
    (Algorithm 1, Eq. 16, 21); see :func:`reference.mlp_prox_steps_`."""
    if not (_dispatchable((params,), (lr, prox), optional=(anchors, importance))
            and isinstance(x, Tensor) and isinstance(y, Tensor)):
        return reference.mlp_prox_steps_(params, x, y, anchors, importance, lr, prox)
    _ops.mlp_prox_steps_(params, x, y, anchors, importance, lr, prox)


def ring_insert_(data: Tensor, counts: Tensor, x: Tensor, y: Tensor, task: int) -> None:
    """Batched insert into per-(task, class) FIFO rings; see :func:`reference.ring_insert_`."""
    if not HAVE_EXT:
        return reference.ring_insert_(data, counts, x, y, task)
    _ops.ring_insert_(data, counts, x, y, task)


def ring_sample(counts: Tensor, m: int, tasks: Sequence[int], n: int,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Uniform draw of filled ring slots of ``tasks``; see :func:`reference.ring_sample`."""
    if not HAVE_EXT:
        return reference.ring_sample(counts, m, tasks, n, generator)
    return _ops.ring_sample(counts, m, list(tasks), n, generator)


def ring_sample_rows(data: Tensor, counts: Tensor, tasks: Sequence[int], n: int,
                     generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`ring_sample` plus the gather of rows, labels and task ids, in one call;
    see :func:`reference.ring_sample_rows`."""
    if not HAVE_EXT:
        return reference.ring_sample_rows(data, counts, tasks, n, generator)
    return _ops.ring_sample_rows(data, counts, list(tasks), n, generator)


def reservoir_insert_(data: Tensor, labels: Tensor, tasks: Tensor, x: Tensor, y: Tensor, task: int,
                      n_seen: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Batched reservoir insert (algorithm R); see :func:`reference.reservoir_insert_`."""
    if not HAVE_EXT:
        return reference.reservoir_insert_(data, labels, tasks, x, y, task, n_seen, generator)
    return _ops.reservoir_insert_(data, labels, tasks, x, y, task, n_seen, generator)
