"""Pure-PyTorch references of every fused fastcl operator: the specification.

Each function here has the same signature and the same semantics as the fused op of the
same name in :mod:`fastcl.ops`, including argument checking: a call that is rejected raises
before any tensor is written. They are written to be read, not to be fast; the property
tests in ``tests/`` prove the fused kernels equal to them.

Conventions shared by every list op:

* every list has the same length; tensor ``i`` of every list has the shape of ``params[i]``
  (``thetas[i]`` of ``trajectory_shift_`` has one more leading dimension, ``T``);
* every tensor of one call has the same floating dtype and device;
* float16 / bfloat16 tensors are stored as such and computed in float32, rounded once when the
  result is stored (the fused kernels' semantics);
* in-place ops return ``None``; they may be given the same tensor twice (for instance a grad
  list that *is* the param list), with the result of the out-of-place expression below;
* in-place ops are not differentiable: with grad mode on, a written tensor that requires grad
  (leaf or not) is refused with a ValueError naming it; under ``torch.no_grad()`` they proceed,
  as PyTorch's own in-place ops do (see docs/op-contracts.md);
* every float argument is finite: inf is rejected like nan, naming the argument.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
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
    "LR_MODES",
]

#: ``emcl_meta_step_`` learning-rate modes (the op takes the integer).
LR_MODES = {"paper": 0, "stabilised": 1, "inverse": 2}

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------- checking
def _check_list(name: str, tensors, *, allow_none: bool = False):
    if tensors is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a list of tensors, got None")
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list of tensors, got {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}] must be a Tensor, got {type(t).__name__}")
    return list(tensors)


def _check_group(names: Sequence[str], lists: Sequence[list], *, lead: Optional[int] = None):
    """Same lengths; same dtype/device everywhere; matching shapes (``lead``: the list at
    that position carries one extra leading dimension)."""
    ref_name, ref = names[0], lists[0]
    for name, lst in zip(names[1:], lists[1:]):
        if len(lst) != len(ref):
            raise ValueError(
                f"{name} has {len(lst)} tensors but {ref_name} has {len(ref)}: lists must have equal length"
            )
    if not ref:
        return
    dtype, device = ref[0].dtype, ref[0].device
    for name, lst in zip(names, lists):
        for i, t in enumerate(lst):
            if t.dtype not in _FLOATS:
                raise TypeError(f"{name}[{i}] has dtype {t.dtype}; expected a floating dtype")
            if t.dtype != dtype:
                raise TypeError(f"{name}[{i}] has dtype {t.dtype} but {ref_name}[0] has {dtype}")
            if t.device != device:
                raise ValueError(f"{name}[{i}] is on {t.device} but {ref_name}[0] is on {device}")
    for j, (name, lst) in enumerate(zip(names, lists)):
        for i, t in enumerate(lst):
            want = ref[i].shape
            got = t.shape[1:] if (lead is not None and j == lead) else t.shape
            if lead is not None and j == lead and t.dim() < 1:
                raise ValueError(f"{name}[{i}] must have a leading T dimension, got a scalar")
            if got != want:
                raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)}; expected {tuple(want)}"
                                 + (" with a leading T dimension" if (lead is not None and j == lead) else ""))


def _check_real(name: str, value, *, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be nan")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    if math.isinf(value):  # no op defines what an infinite step size or rate would mean
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: a permutation of a contiguous tensor (size-1 dims aside)."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _overlap(a: Tensor, b: Tensor) -> str:
    """"full", "partial", "no" or "too hard" (as ATen's get_overlap_status)."""
    if a is b:
        return "full"
    if a.numel() == 0 or b.numel() == 0:
        return "no"
    if not (_dense(a) and _dense(b)):
        return "too hard"
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return "no"
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1, b1 = a0 + a.numel() * a.element_size(), b0 + b.numel() * b.element_size()
    if (a0, a1) == (b0, b1):
        return "full" if a.stride() == b.stride() else "partial"
    return "partial" if a0 < b1 and b0 < a1 else "no"


def _labelled(pairs):
    """``(label, index, tensor)`` for each tensor of ``(name, list)`` / ``(name, tensor)`` pairs:
    ``"params[2]"``, or ``"x"`` for a lone tensor argument (index 0)."""
    for name, value in pairs:
        if isinstance(value, Tensor):
            yield name, 0, value
        else:
            for i, t in enumerate(value):
                yield f"{name}[{i}]", i, t


def _refuse_grad(op: str, written) -> None:
    """With grad mode on, no written tensor may require grad, leaf or not: the in-place ops are
    not differentiable, and autograd would silently miss the update (the rule of the fused ops'
    Autograd kernel, csrc/cpu/inplace_autograd.cpp). Under torch.no_grad() they proceed.

    Args:
        op: the op's name, for the message.
        written: ``(name, list or tensor)`` pairs, as passed (anything else is left to the
            other checks).
    """
    if not torch.is_grad_enabled():
        return
    for name, value in written:
        if not isinstance(value, (Tensor, list, tuple)):
            continue
        for label, _, t in _labelled([(name, value)]):
            if isinstance(t, Tensor) and t.requires_grad:
                raise ValueError(f"{label} requires grad: fastcl::{op} writes it in place and is not differentiable, "
                                 "so gradients through it would be silently wrong; call the op under torch.no_grad(), "
                                 "or pass a tensor that does not require grad")


def _check_versioned(written):
    """Written tensors must have a version counter: an inference tensor can only be updated
    inside InferenceMode (PyTorch's own in-place ops raise only after writing it)."""
    if torch.is_inference_mode_enabled():
        return
    for label, _, t in _labelled(written):
        if t.is_inference():
            raise ValueError(f"{label} is an inference tensor: an inplace update to an inference tensor "
                             "outside InferenceMode is not allowed (clone it outside InferenceMode first)")


def _check_aliasing(written, read=(), in_place: bool = True):
    """Memory aliasing of one call's tensors (``written`` / ``read``: (name, list) pairs, or
    (name, tensor) for a lone tensor argument).

    A written tensor may be the very same memory as a *read* argument of its own index (an
    in-place update: a grad list that is the param list). Any other overlap of a written
    tensor (with a read tensor of another index, with another written tensor, partially) makes
    the result depend on the order of the writes, and is rejected; so is a written tensor that
    overlaps itself (an expanded view). Strided views that are not a permutation of a
    contiguous block ("too hard" to compare) are accepted against read tensors, and rejected
    against written ones whose byte range they intersect. Called on real tensors only (it reads
    data pointers), so not from the fake kernels, and skipped while torch.compile traces.
    ``in_place=False`` (ops that read their inputs at several steps while writing) rejects the
    in-place exception and strided intersections with read tensors too.
    """
    if torch.compiler.is_compiling():
        return  # data pointers and inference-ness are run-time facts: checked in eager only
    _check_versioned(written)
    # torch.func wrappers (batched / grad-tracking tensors) have no storage to compare.
    by_memory = not torch._C._are_functorch_transforms_active()
    entries = []
    for is_written, pairs in ((True, written), (False, read)):
        for name, i, t in _labelled(pairs):
            if is_written and any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
                raise ValueError(f"{name} has internally overlapping memory (an expanded view?); "
                                 "it cannot be written in place")
            if not by_memory or t.numel() == 0 or t.device.type == "meta":
                continue
            span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
            begin = t.data_ptr()
            entries.append((begin, begin + span * t.element_size(), name, i, is_written, t))
    entries.sort(key=lambda e: e[0])  # stable: of two tensors at one address, the first listed is named first
    for k, (_, end, xname, xi, xw, x) in enumerate(entries):
        for begin, _, yname, yi, yw, y in entries[k + 1:]:
            if begin >= end:
                break
            if not (xw or yw):
                continue
            status = _overlap(x, y)
            if status == "no":
                continue
            if not xw:  # name the written tensor first
                xname, xi, yname, yi, xw, yw = yname, yi, xname, xi, yw, xw
            if status == "too hard":
                if (xw and yw) or not in_place:
                    raise ValueError(f"{xname} and {yname} are strided views of one storage whose "
                                     "byte ranges intersect; written tensors must be provably disjoint")
                continue
            if in_place and status == "full" and xi == yi and xw != yw:
                continue
            what = "are the same memory" if status == "full" else "partially overlap in memory"
            if not in_place:
                raise ValueError(f"{xname} and {yname} {what}; the written tensors must not share "
                                 "memory with any other argument")
            raise ValueError(f"{xname} and {yname} {what}; a written tensor may only alias a "
                             "read argument of its own index (in place), entirely")


def _check_step(anchors, importance, lr, prox):
    """The step size and prox strength of a proximal step and its optional anchors / importance."""
    anchors = _check_list("anchors", anchors, allow_none=True)
    importance = _check_list("importance", importance, allow_none=True)
    lr = _check_real("lr", lr, low=0.0)
    prox = _check_real("prox", prox, low=0.0)
    if (anchors is None) != (importance is None):
        raise ValueError("anchors and importance must both be given or both be None")
    if anchors is None and prox != 0.0:
        raise ValueError(f"prox={prox} needs anchors and importance (None is allowed only with prox=0)")
    return anchors, importance, lr, prox


def _check_prox(params, grads, anchors, importance, lr, prox):
    params = _check_list("params", params)
    grads = _check_list("grads", grads)
    anchors, importance, lr, prox = _check_step(anchors, importance, lr, prox)
    names, lists = ["params", "grads"], [params, grads]
    if anchors is not None:
        names += ["anchors", "importance"]
        lists += [anchors, importance]
    _check_group(names, lists)
    return params, grads, anchors, importance, lr, prox


def _check_taylor(importance, grads, params, decay):
    importance = _check_list("importance", importance)
    grads = _check_list("grads", grads)
    params = _check_list("params", params)
    decay = _check_real("decay", decay, low=0.0, high=1.0)
    _check_group(["importance", "grads", "params"], [importance, grads, params])
    return importance, grads, params, decay


def _check_lr_mode(lr_mode):
    if isinstance(lr_mode, bool) or not isinstance(lr_mode, int) or lr_mode not in (0, 1, 2):
        raise ValueError(f"lr_mode must be 0 (paper), 1 (stabilised) or 2 (inverse), got {lr_mode!r}")
    return int(lr_mode)


def _check_emcl(params, fast_params, importance, meta_lrs, grads, lam, decay, r, lr_mode, alpha0, eps):
    params = _check_list("params", params)
    fast_params = _check_list("fast_params", fast_params)
    importance = _check_list("importance", importance)
    meta_lrs = _check_list("meta_lrs", meta_lrs)
    grads = _check_list("grads", grads)
    lam = _check_real("lam", lam, low=0.0)
    decay = _check_real("decay", decay, low=0.0, high=1.0)
    r = _check_real("r", r, low=0.0)
    alpha0 = _check_real("alpha0", alpha0, low=0.0)
    eps = _check_real("eps", eps, low=0.0)
    lr_mode = _check_lr_mode(lr_mode)
    _check_group(["params", "fast_params", "importance", "meta_lrs", "grads"],
                 [params, fast_params, importance, meta_lrs, grads])
    return params, fast_params, importance, meta_lrs, grads, lam, decay, r, lr_mode, alpha0, eps


def _check_shift(phi, thetas, meta_lr, shift):
    phi = _check_list("phi", phi)
    thetas = _check_list("thetas", thetas)
    meta_lr = _check_real("meta_lr", meta_lr, low=0.0)
    if not isinstance(shift, bool):
        raise TypeError(f"shift must be a bool, got {type(shift).__name__}")
    _check_group(["phi", "thetas"], [phi, thetas], lead=1)
    for i, th in enumerate(thetas):
        if th.shape[0] < 1:
            raise ValueError(f"thetas[{i}] has T = 0 task learners; expected T >= 1")
    return phi, thetas, meta_lr, shift


def _math(t):
    """float16 / bfloat16 tensors are computed in float32 (and rounded once when stored), as the
    fused kernels do; float32 / float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _prox_expr(p, g, a, h, lr, prox):
    dtype = p.dtype
    p, g = _math(p), _math(g)
    if a is None:
        return (p - lr * g).to(dtype)
    a, h = _math(a), _math(h)
    c = prox * h
    return ((p - lr * g + c * a) / (c + 1)).to(dtype)


# --------------------------------------------------------------------------- updates
def prox_sgd_(params, grads, anchors, importance, lr: float, prox: float) -> None:
    """Proximal SGD step, in place: the EMCL inner step (Eq. 16, 17, closed form Eq. 21).

    For every element ``theta <- (theta - lr*g + prox*h*theta0) / (prox*h + 1)`` with
    ``theta0`` the anchor and ``h`` the importance; ``prox = gamma * lambda`` in the paper's
    symbols. ``prox = 0`` is plain SGD, and then ``anchors`` / ``importance`` may be None.

    Args:
        params: tensors updated in place, any shapes.
        grads: gradients, shapes of ``params``.
        anchors: theta_0 of the inner loop, shapes of ``params`` (or None when prox == 0).
        importance: h >= 0, shapes of ``params`` (or None when prox == 0).
        lr: step size (gamma in Eq. 16), >= 0.
        prox: gamma*lambda, >= 0.
    """
    _refuse_grad("prox_sgd_", [("params", params)])
    params, grads, anchors, importance, lr, prox = _check_prox(params, grads, anchors, importance, lr, prox)
    _check_aliasing([("params", params)],
                    [("grads", grads)] + ([("anchors", anchors), ("importance", importance)] if anchors else []))
    new = [
        _prox_expr(p, g, None if anchors is None else anchors[i], None if importance is None else importance[i], lr, prox)
        for i, (p, g) in enumerate(zip(params, grads))
    ]
    with torch.no_grad():
        for p, n in zip(params, new):
            p.copy_(n)


def prox_sgd(params, grads, anchors, importance, lr: float, prox: float) -> list[Tensor]:
    """Out-of-place, differentiable :func:`prox_sgd_`: returns the new parameters.

    Gradients flow to ``params``, ``grads``, ``anchors`` and ``importance`` (second-order
    MAML back-propagates through the inner step, including through ``grads``).
    """
    params, grads, anchors, importance, lr, prox = _check_prox(params, grads, anchors, importance, lr, prox)
    return [
        _prox_expr(p, g, None if anchors is None else anchors[i], None if importance is None else importance[i], lr, prox)
        for i, (p, g) in enumerate(zip(params, grads))
    ]


def taylor_importance_(importance, grads, params, decay: float) -> None:
    """Moving-average Taylor importance, in place (EMCL Eq. 7 with Omega of Eq. 13).

    ``h <- decay*h + (1-decay)*|g*theta|`` for every element.

    Args:
        importance: h, updated in place.
        grads: dL/dtheta, shapes of ``importance``.
        params: theta, shapes of ``importance``.
        decay: eta in Eq. 7, in [0, 1].
    """
    _refuse_grad("taylor_importance_", [("importance", importance)])
    importance, grads, params, decay = _check_taylor(importance, grads, params, decay)
    _check_aliasing([("importance", importance)], [("grads", grads), ("params", params)])
    new = [decay * _math(h) + (1 - decay) * (_math(g) * _math(p)).abs() for h, g, p in zip(importance, grads, params)]
    with torch.no_grad():
        for h, n in zip(importance, new):
            h.copy_(n)


def emcl_meta_step_(params, fast_params, importance, meta_lrs, grads, lam: float, decay: float,
                    r: float, lr_mode: int = 0, alpha0: float = 0.0, eps: float = 0.0) -> None:
    """EMCL meta update in one pass: Eq. 10 with the rates of Eq. 8, importance of Eq. 7/13.

    For every element, with ``h`` and ``alpha`` the values before the call:

    1. meta-gradient ``G = lam * h * (theta0 - theta_k)``  (Eq. 10, H^2 = diag(h): the importance
       the inner loop that produced ``theta_k`` was regularised with);
    2. ``theta0 <- theta0 - alpha * G``  (Algorithm 1, line 9: the meta step uses alpha^j);
    3. ``h <- decay*h + (1-decay)*|g * theta0_old|``  (Eq. 7 with Omega of Eq. 13);
    4. the rate for the next step (Algorithm 1, line 8, Eq. 8):

       * ``lr_mode=0`` ("paper", as printed): ``alpha <- alpha * r / (h_new + eps)``. This
         compounds: after n steps alpha carries a factor prod(r/h), so it decays to 0 or grows
         without bound unless h stays exactly at r. It is the paper's rule, kept for fidelity.
       * ``lr_mode=1`` ("stabilised"): ``alpha <- alpha0 * min(1, r / (h_new + eps))``. The rate
         is still inversely proportional to the importance (the intent of Eq. 8: important
         parameters move less) but does not compound, so it is bounded by ``alpha0`` and by
         ``alpha0 * r / h``; unimportant parameters (h <= r) keep the initial rate alpha0.

       * ``lr_mode=2`` ("inverse", the EMCL learner's default reading):
         ``alpha <- alpha0 * (r / (h_new + eps))``, uncapped and not compounding, so that
         ``alpha * lam * h`` at the next step is ``alpha0 * r * lam`` for every element (up to
         ``h / (h + eps)``): Eq. 8 cancels the h of Eq. 10.

    Args:
        params: theta_0 (meta parameters), updated in place.
        fast_params: theta_k, the inner-loop result, read only.
        importance: h, updated in place.
        meta_lrs: per-element meta learning rates alpha, updated in place.
        grads: dL_t/dtheta_0 used for the importance, read only.
        lam: lambda (inner regularisation), >= 0.
        decay: eta, in [0, 1].
        r: learning-rate scale factor, >= 0.
        lr_mode: 0 (paper), 1 (stabilised) or 2 (inverse); see :data:`LR_MODES`.
        alpha0: initial meta learning rate (used by the stabilised and inverse modes), >= 0.
        eps: added to h in the denominator of Eq. 8, >= 0.
    """
    _refuse_grad("emcl_meta_step_", [("params", params), ("importance", importance), ("meta_lrs", meta_lrs)])
    params, fast_params, importance, meta_lrs, grads, lam, decay, r, lr_mode, alpha0, eps = _check_emcl(
        params, fast_params, importance, meta_lrs, grads, lam, decay, r, lr_mode, alpha0, eps)
    _check_aliasing([("params", params), ("importance", importance), ("meta_lrs", meta_lrs)],
                    [("fast_params", fast_params), ("grads", grads)])
    new_p, new_h, new_a = [], [], []
    for p, pk, h, a, g in zip(params, fast_params, importance, meta_lrs, grads):
        p, pk, h, a, g = _math(p), _math(pk), _math(h), _math(a), _math(g)
        meta_grad = lam * h * (p - pk)
        new_p.append(p - a * meta_grad)
        h_new = decay * h + (1 - decay) * (g * p).abs()
        new_h.append(h_new)
        if lr_mode == 0:
            new_a.append(a * r / (h_new + eps))
        else:
            # a true division: PyTorch evaluates `scalar / tensor` as `scalar * tensor.reciprocal()`,
            # which gives 0 * inf = nan for r = 0 over a denormal denominator, where r/(h+eps) = 0
            inverse = torch.full_like(h_new, r) / (h_new + eps)
            new_a.append(alpha0 * (torch.clamp(inverse, max=1.0) if lr_mode == 1 else inverse))
    with torch.no_grad():
        for dst, src in zip(params + importance + meta_lrs, new_p + new_h + new_a):
            dst.copy_(src)


def trajectory_shift_(phi, thetas, meta_lr: float, shift: bool = True) -> None:
    """Reptile meta step on ``phi`` and the shift of every task trajectory (CTS Alg. 2, l. 11-13).

    ``delta = meta_lr * (mean over T of thetas[i] - phi[i])``; ``phi[i] += delta``; and, when
    ``shift``, every ``thetas[i][t] += delta``. ``shift=False`` is Reptile (Algorithm 1, line 12).

    Args:
        phi: meta parameters (shapes S_i), updated in place.
        thetas: task learners' parameters, ``thetas[i]`` of shape ``[T, *S_i]`` with T >= 1,
            updated in place when ``shift``.
        meta_lr: beta, >= 0.
        shift: apply the shift to the trajectories (CTS) or not (Reptile).
    """
    _refuse_grad("trajectory_shift_", [("phi", phi)] + ([("thetas", thetas)] if shift is True else []))
    phi, thetas, meta_lr, shift = _check_shift(phi, thetas, meta_lr, shift)
    if shift:
        _check_aliasing([("phi", phi), ("thetas", thetas)])
    else:
        _check_aliasing([("phi", phi)], [("thetas", thetas)])
    deltas = [meta_lr * (_math(th).mean(0) - _math(p)) for p, th in zip(phi, thetas)]
    with torch.no_grad():
        for p, th, d in zip(phi, thetas, deltas):
            p.add_(d)
            if shift:
                th.add_(d.unsqueeze(0))


# --------------------------------------------------------------------------- MLP inner loop
def _check_mlp_prox_steps(params, x, y, anchors, importance, lr, prox):
    params = _check_list("params", params)
    anchors, importance, lr, prox = _check_step(anchors, importance, lr, prox)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if not params or len(params) % 2:
        raise ValueError("params must be [W_1, b_1, ..., W_L, b_L] (an even, nonzero number of tensors), "
                         f"got {len(params)} tensors")
    names, lists = ["params"], [params]
    if anchors is not None:
        names += ["anchors", "importance"]
        lists += [anchors, importance]
    _check_group(names, lists)
    if params[0].dtype not in (torch.float32, torch.float64):
        raise TypeError(f"params[0] has dtype {params[0].dtype}; mlp_prox_steps_ takes float32 or float64")
    width = None
    for l in range(0, len(params), 2):
        w, b = params[l], params[l + 1]
        if w.dim() != 2:
            raise ValueError(f"params[{l}] (W_{l // 2 + 1}) must be a matrix [out, in], got shape {tuple(w.shape)}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"params[{l + 1}] (b_{l // 2 + 1}) has shape {tuple(b.shape)}; expected "
                             f"({w.shape[0]},) to match W_{l // 2 + 1} of shape {tuple(w.shape)}")
        if width is not None and w.shape[1] != width:
            raise ValueError(f"params[{l}] (W_{l // 2 + 1}) has shape {tuple(w.shape)}; expected {width} inputs "
                             f"(the outputs of W_{l // 2})")
        width = w.shape[0]
    if x.dim() < 1:
        raise ValueError("x must be a batch [k, ...], got a scalar")
    features = math.prod(x.shape[1:])
    if features != params[0].shape[1]:
        raise ValueError(f"x has shape {tuple(x.shape)}: {features} features per example; "
                         f"W_1 expects {params[0].shape[1]}")
    if x.dtype != params[0].dtype:
        raise TypeError(f"x has dtype {x.dtype} but params[0] has {params[0].dtype}")
    if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be an int64 vector of length {x.shape[0]} (the batch size of x), "
                         f"got {y.dtype} {tuple(y.shape)}")
    if x.device != params[0].device or y.device != params[0].device:
        raise ValueError(f"x and y must be on the device of params[0] ({params[0].device}), "
                         f"got x on {x.device}, y on {y.device}")
    return params, x, y, anchors, importance, lr, prox


def _check_labels(y: Tensor, num_classes: int) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"y must hold labels in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]")


def mlp_forward(params: Sequence[Tensor], x: Tensor) -> Tensor:
    """Logits of the ReLU MLP ``params = [W_1, b_1, ..., W_L, b_L]`` on ``x`` ([k, ...]): a ReLU
    after every layer but the last (fastcl's :class:`~fastcl.models.MLP`)."""
    a = x.reshape(x.shape[0], -1)
    for l in range(0, len(params), 2):
        a = torch.nn.functional.linear(a, params[l], params[l + 1])
        if l + 2 < len(params):
            a = torch.relu(a)
    return a


def mlp_loss_grads(params: Sequence[Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
    """Autograd gradient of the mean cross-entropy of :func:`mlp_forward` on ``(x, y)`` with
    respect to ``params`` (detached copies are differentiated; ``params`` are not touched)."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(True) for p in params]
        loss = torch.nn.functional.cross_entropy(mlp_forward(leaves, x), y)
        return list(torch.autograd.grad(loss, leaves))


def mlp_prox_steps_(params, x: Tensor, y: Tensor, anchors, importance, lr: float, prox: float) -> None:
    """The EMCL inner loop on a ReLU MLP, in place: one :func:`prox_sgd_` step per example.

    For ``i = 0, ..., k-1`` (``k = x.shape[0]``), in order: ``g`` = the gradient of the
    cross-entropy of :func:`mlp_forward` on the single example ``(x[i], y[i])`` at the current
    ``params``, then ``prox_sgd_(params, g, anchors, importance, lr, prox)``:
    ``theta <- (theta - lr*g + prox*h*theta0) / (prox*h + 1)`` (EMCL Algorithm 1, inner loop;
    Eq. 16 with the closed-form prox of Eq. 21, ``prox = gamma*lambda``). ``prox = 0`` (anchors,
    importance None) is k plain SGD steps.

    Args:
        params: ``[W_1, b_1, ..., W_L, b_L]``, ``W_l`` of shape ``[n_l, n_(l-1)]``, ``b_l``
            ``[n_l]``, float32 or float64; updated in place.
        x: ``[k, ...]`` examples, ``prod(x.shape[1:]) == n_0``, dtype of ``params``.
        y: ``[k]`` int64 labels in ``[0, n_L)``.
        anchors: theta_0, shapes of ``params`` (or None when prox == 0).
        importance: h >= 0, shapes of ``params`` (or None when prox == 0).
        lr: beta, the inner step size, >= 0.
        prox: gamma*lambda, >= 0.

    ``params`` must not share memory with any other argument (the inputs are read at every
    step while ``params`` change), not even the same tensor as ``anchors``.
    """
    _refuse_grad("mlp_prox_steps_", [("params", params)])
    params, x, y, anchors, importance, lr, prox = _check_mlp_prox_steps(params, x, y, anchors, importance, lr, prox)
    read = [("x", x), ("y", y)] + ([("anchors", anchors), ("importance", importance)] if anchors else [])
    _check_aliasing([("params", params)], read, in_place=False)
    _check_labels(y, params[-1].shape[0])
    for i in range(x.shape[0]):
        prox_sgd_(params, mlp_loss_grads(params, x[i:i + 1], y[i:i + 1]), anchors, importance, lr, prox)


# --------------------------------------------------------------------------- memory
def _check_ring(data, counts, x, y, task):
    if not isinstance(data, Tensor) or not isinstance(counts, Tensor):
        raise TypeError("data and counts must be tensors")
    if counts.dtype != torch.int64 or counts.dim() != 2:
        raise TypeError(f"counts must be a 2-d int64 tensor [num_tasks, num_classes], got {counts.dtype} {tuple(counts.shape)}")
    num_tasks, num_classes = counts.shape
    rings = num_tasks * num_classes
    if rings == 0 or data.dim() < 1 or data.shape[0] % rings != 0 or data.shape[0] == 0:
        raise ValueError(f"data must have num_tasks*num_classes*m rows with m >= 1; got {data.shape[0] if data.dim() else 0} rows for {rings} rings")
    m = data.shape[0] // rings
    if x.dim() < 1 or x.shape[1:] != data.shape[1:]:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected [B, {', '.join(map(str, data.shape[1:]))}]")
    if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be an int64 vector of length {x.shape[0]}, got {y.dtype} {tuple(y.shape)}")
    if x.dtype != data.dtype:
        raise TypeError(f"x has dtype {x.dtype} but data has {data.dtype}")
    if not (x.device == y.device == data.device == counts.device):
        raise ValueError("data, counts, x and y must be on one device")
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < num_tasks:
        raise ValueError(f"task must be an int in [0, {num_tasks}), got {task!r}")
    _check_memory_aliasing([("data", data), ("counts", counts)], x, y)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"y must hold labels in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]")
    _check_counts_nonnegative(counts)
    return m, num_classes


def _check_memory_aliasing(written, x, y):
    """The memory ops' storage shares no memory with any other argument (x a view of data, y a
    view of labels, labels that are tasks, ...): the fused kernels write it in an order of their
    own, this reference example by example, and the result would depend on that order."""
    _check_aliasing(written, [("x", x), ("y", y)], in_place=False)


def _check_counts_nonnegative(counts):
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError(f"counts must be >= 0 (examples inserted per ring), got a minimum of {int(counts.min())}")


def ring_insert_(data: Tensor, counts: Tensor, x: Tensor, y: Tensor, task: int) -> None:
    """Insert a batch into per-(task, class) FIFO rings of ``m`` slots: equal to one by one.

    Ring ``(task, c)`` owns rows ``[(task*C + c)*m, (task*C + c + 1)*m)`` of ``data``; its next
    slot is ``counts[task, c] % m``, so the ring fills from its first row and then overwrites
    its oldest example. Two examples of one class in a batch take consecutive slots.

    Args:
        data: ``[num_tasks*num_classes*m, *feat]`` storage, written in place.
        counts: ``[num_tasks, num_classes]`` int64, examples ever inserted per ring; updated.
        x: ``[B, *feat]`` examples (dtype of ``data``).
        y: ``[B]`` int64 labels in ``[0, num_classes)``.
        task: the task id of the whole batch.

    ``data`` and ``counts`` share no memory with each other, ``x`` or ``y`` (a batch that is a
    view of ``data`` is rejected; a disjoint view of the same storage is fine).
    """
    _refuse_grad("ring_insert_", [("data", data), ("counts", counts)])
    m, num_classes = _check_ring(data, counts, x, y, task)
    with torch.no_grad():  # a copy of x is stored: nothing flows back to x
        for i in range(x.shape[0]):
            c = int(y[i])
            slot = (task * num_classes + c) * m + int(counts[task, c]) % m
            data[slot].copy_(x[i])
            counts[task, c] += 1


def ring_sample(counts: Tensor, m: int, tasks: Sequence[int], n: int,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw ``n`` row indices uniformly, with replacement, from the filled slots of ``tasks``.

    Ring ``(t, c)`` holds ``min(counts[t, c], m)`` filled slots, its first rows. Draws are
    ``u = floor(U * N)`` with ``U ~ uniform[0, 1)`` from ``generator`` (``N`` = filled slots in
    the selection), mapped in ring order (task-major, then class, then slot).

    Returns:
        ``[n]`` int64 row indices into the ring storage, on the device of ``counts``.
    """
    if counts.dtype != torch.int64 or counts.dim() != 2:
        raise TypeError("counts must be a 2-d int64 tensor [num_tasks, num_classes]")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an int >= 1, got {m!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    num_tasks, num_classes = counts.shape
    tasks = list(tasks)
    for t in tasks:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < num_tasks:
            raise ValueError(f"tasks must hold task ids in [0, {num_tasks}), got {t!r}")
    _check_counts_nonnegative(counts)
    mask = torch.zeros(num_tasks, dtype=torch.bool, device=counts.device)
    if tasks:
        mask[torch.tensor(tasks, device=counts.device)] = True
    fills = torch.where(mask[:, None], counts.clamp(max=m), torch.zeros_like(counts)).flatten()
    total = int(fills.sum())
    if total == 0:
        raise ValueError(f"cannot sample: tasks {tasks} hold no examples")
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=counts.device)
    k = torch.floor(u * total).long().clamp(max=total - 1)
    ends = fills.cumsum(0)
    ring = torch.searchsorted(ends, k, right=True)
    offset = k - (ends[ring] - fills[ring])
    return ring * m + offset


def ring_sample_rows(data: Tensor, counts: Tensor, tasks: Sequence[int], n: int,
                     generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`ring_sample` and the gather of what it drew, in one call.

    ``m`` is ``data.shape[0] // (num_tasks * num_classes)``; the draws are those of
    :func:`ring_sample` with the same generator state.

    Returns:
        ``(rows, labels, task_ids, index)``: ``[n, *feat]`` copies of the drawn rows of ``data``,
        their labels ``index // m % num_classes``, their tasks ``index // (m * num_classes)``,
        and the ``[n]`` int64 row indices.
    """
    if not isinstance(data, Tensor) or not isinstance(counts, Tensor):
        raise TypeError("data and counts must be tensors")
    if counts.dtype != torch.int64 or counts.dim() != 2:
        raise TypeError(f"counts must be a 2-d int64 tensor [num_tasks, num_classes], got {counts.dtype} {tuple(counts.shape)}")
    rings = counts.shape[0] * counts.shape[1]
    rows = data.shape[0] if data.dim() else 0
    if rings == 0 or rows == 0 or rows % rings:
        raise ValueError(f"data must have num_tasks*num_classes*m rows with m >= 1; got {rows} rows for {rings} rings")
    if data.device != counts.device:
        raise ValueError(f"data is on {data.device} but counts is on {counts.device}")
    m = rows // rings
    index = ring_sample(counts, m, tasks, n, generator)
    num_classes = counts.shape[1]
    return data[index], index // m % num_classes, index // (m * num_classes), index


def reservoir_insert_(data: Tensor, labels: Tensor, tasks: Tensor, x: Tensor, y: Tensor, task: int,
                      n_seen: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Reservoir sampling (Vitter's algorithm R) of a batch, equal in law to one by one.

    Example ``i`` of the batch is the ``s = n_seen + i``-th example of the stream (0-based). If
    ``s < capacity`` it goes to slot ``s``; otherwise ``j = floor(U * (s + 1))`` with ``U`` the
    ``i``-th of ``B`` uniforms drawn from ``generator``, and it replaces slot ``j`` when
    ``j < capacity``. Later examples of the batch overwrite earlier ones, as one by one.

    Args:
        data: ``[capacity, *feat]`` storage; labels: ``[capacity]`` int64; tasks: ``[capacity]``
            int64; all written in place.
        x: ``[B, *feat]``; y: ``[B]`` int64; task: the task id stored with them.
        n_seen: examples of the stream seen before this batch.

    ``data``, ``labels`` and ``tasks`` share no memory with each other, ``x`` or ``y`` (a batch
    that is a view of ``data`` is rejected; a disjoint view of the same storage is fine).

    Returns:
        ``[B]`` int64: the slot each example went to, -1 where it was not kept.
    """
    _refuse_grad("reservoir_insert_", [("data", data), ("labels", labels), ("tasks", tasks)])
    if not all(isinstance(t, Tensor) for t in (data, labels, tasks, x, y)):
        raise TypeError("data, labels, tasks, x and y must be tensors")
    cap = data.shape[0] if data.dim() else 0
    if cap < 1:
        raise ValueError("data must have at least one row (capacity >= 1)")
    if labels.shape != (cap,) or tasks.shape != (cap,) or labels.dtype != torch.int64 or tasks.dtype != torch.int64:
        raise ValueError(f"labels and tasks must be int64 vectors of length {cap}")
    if x.dim() < 1 or x.shape[1:] != data.shape[1:]:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected [B, {', '.join(map(str, data.shape[1:]))}]")
    if x.dtype != data.dtype:
        raise TypeError(f"x has dtype {x.dtype} but data has {data.dtype}")
    if y.dtype != torch.int64 or y.shape != (x.shape[0],):
        raise ValueError(f"y must be an int64 vector of length {x.shape[0]}")
    if isinstance(n_seen, bool) or not isinstance(n_seen, int) or n_seen < 0:
        raise ValueError(f"n_seen must be an int >= 0, got {n_seen!r}")
    if isinstance(task, bool) or not isinstance(task, int) or task < 0:
        raise ValueError(f"task must be an int >= 0, got {task!r}")
    if not (x.device == y.device == data.device == labels.device == tasks.device):
        raise ValueError("data, labels, tasks, x and y must be on one device")
    _check_memory_aliasing([("data", data), ("labels", labels), ("tasks", tasks)], x, y)
    b = x.shape[0]
    u = torch.rand(b, generator=generator, dtype=torch.float64, device=data.device)
    s = n_seen + torch.arange(b, device=data.device, dtype=torch.int64)
    j = torch.floor(u * (s + 1).double()).long()
    slots = torch.where(s < cap, s, torch.where(j < cap, j, torch.full_like(j, -1)))
    with torch.no_grad():  # a copy of x is stored: nothing flows back to x
        for i in range(b):
            k = int(slots[i])
            if k >= 0:
                data[k].copy_(x[i])
                labels[k] = y[i]
                tasks[k] = task
    return slots
