"""Python-side registrations of the fused ops: fake (meta) kernels for torch.compile, the
autograd formula of the differentiable step, and vmap rules.

Imported by :mod:`fastcl.ops` when the extension is loaded.
"""

from __future__ import annotations

import torch
from torch.library import register_autograd, register_fake

from . import reference

# ---------------------------------------------------------------------------- fake kernels
# The fake kernels also run for real calls on the "meta" device, and for a call whose tensors
# sit on two devices one of which is "meta" (the dispatcher picks the Meta kernel): they check
# every argument with the reference's checks, so such calls (and torch.compile tracing) raise
# the same ValueError / TypeError as the CPU kernels instead of silently doing nothing.


@register_fake("fastcl::prox_sgd_")
def _prox_sgd__fake(params, grads, anchors, importance, lr, prox):
    reference._check_prox(params, grads, anchors, importance, lr, prox)
    return None


@register_fake("fastcl::prox_sgd")
def _prox_sgd_fake(params, grads, anchors, importance, lr, prox):
    reference._check_prox(params, grads, anchors, importance, lr, prox)
    return [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]


@register_fake("fastcl::taylor_importance_")
def _taylor_fake(importance, grads, params, decay):
    reference._check_taylor(importance, grads, params, decay)
    return None


@register_fake("fastcl::emcl_meta_step_")
def _emcl_fake(params, fast_params, importance, meta_lrs, grads, lam, decay, r, lr_mode, alpha0, eps):
    reference._check_emcl(params, fast_params, importance, meta_lrs, grads, lam, decay, r, lr_mode, alpha0, eps)
    return None


@register_fake("fastcl::trajectory_shift_")
def _shift_fake(phi, thetas, meta_lr, shift):
    reference._check_shift(phi, thetas, meta_lr, shift)
    return None


@register_fake("fastcl::mlp_prox_steps_")
def _mlp_prox_steps_fake(params, x, y, anchors, importance, lr, prox):
    reference._check_mlp_prox_steps(params, x, y, anchors, importance, lr, prox)
    return None


@register_fake("fastcl::ring_insert_")
def _ring_insert_fake(data, counts, x, y, task):
    return None


@register_fake("fastcl::ring_sample")
def _ring_sample_fake(counts, m, tasks, n, generator=None):
    return counts.new_empty((n,), dtype=torch.int64)


@register_fake("fastcl::ring_sample_rows")
def _ring_sample_rows_fake(data, counts, tasks, n, generator=None):
    idx = counts.new_empty((n,), dtype=torch.int64)
    return data.new_empty((n, *data.shape[1:])), idx.clone(), idx.clone(), idx


@register_fake("fastcl::reservoir_insert_")
def _reservoir_fake(data, labels, tasks, x, y, task, n_seen, generator=None):
    return x.new_empty((x.shape[0],), dtype=torch.int64)


# ---------------------------------------------------------------------------- autograd
# out = (p - lr*g + c*a) / (c + 1), c = prox*h  (or p - lr*g without anchors):
#   d/dp = 1/(c+1), d/dg = -lr/(c+1), d/da = c/(c+1), d/dh = prox*(a - out)/(c+1).
# The backward is written with differentiable torch ops, so it can itself be differentiated.


def _prox_setup_context(ctx, inputs, output):
    params, grads, anchors, importance, lr, prox = inputs
    ctx.lr, ctx.prox = lr, prox
    ctx.n = len(params)
    ctx.has_anchors = anchors is not None
    saved = list(output) + (list(anchors) + list(importance) if anchors is not None else [])
    ctx.save_for_backward(*saved)


def _prox_backward(ctx, grad_outputs):
    n, lr, prox = ctx.n, ctx.lr, ctx.prox
    saved = ctx.saved_tensors
    outs = saved[:n]
    go = [g if g is not None else torch.zeros_like(o) for g, o in zip(grad_outputs, outs)]
    if not ctx.has_anchors:
        return list(go), [-lr * g for g in go], None, None, None, None
    anchors, importance = saved[n : 2 * n], saved[2 * n :]
    d_p, d_g, d_a, d_h = [], [], [], []
    for g, o, a, h in zip(go, outs, anchors, importance):
        inv = 1.0 / (prox * h + 1)
        gi = g * inv
        d_p.append(gi)
        d_g.append(-lr * gi)
        d_a.append(gi * (prox * h))
        d_h.append(gi * prox * (a - o))
    return d_p, d_g, d_a, d_h, None, None


register_autograd("fastcl::prox_sgd", _prox_backward, setup_context=_prox_setup_context)


# ---------------------------------------------------------------------------- vmap
def _move_bdim(t, bdim, size):
    if bdim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(bdim, 0)


@torch.library.register_vmap("fastcl::trajectory_shift_")
def _shift_vmap(info, in_dims, phi, thetas, meta_lr, shift):
    """vmap over a batch of independent meta-learners: phi[i] batched to [B, *S],
    thetas[i] to [B, T, *S]; the batched call is the op on [T, B, *S] views."""
    phi_dims, theta_dims = in_dims[0], in_dims[1]
    b = info.batch_size
    if phi_dims is None or any(d is None for d in phi_dims):
        raise ValueError("trajectory_shift_ under vmap: phi must be batched (it is written in place)")
    if shift and (theta_dims is None or any(d is None for d in theta_dims)):
        raise ValueError("trajectory_shift_ under vmap with shift=True: thetas must be batched "
                         "(they are written in place)")
    phi_b = [p.movedim(d, 0) for p, d in zip(phi, phi_dims)]
    theta_b = []
    for th, d in zip(thetas, theta_dims if theta_dims is not None else [None] * len(thetas)):
        th = _move_bdim(th, d, b)  # [B, T, *S]
        theta_b.append(th.movedim(0, 1))  # [T, B, *S] view of the same memory
    torch.ops.fastcl.trajectory_shift_(phi_b, theta_b, meta_lr, shift)
    return None, None

