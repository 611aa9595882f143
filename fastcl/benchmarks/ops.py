"""Fused-op benchmark: fastcl's fused operators against the ways to write them in PyTorch.

Run it with ``fastcl bench ops [--quick] [--threads 1,2] [--markdown] [--json PATH]``, or
``python -m fastcl.benchmarks.ops``. Every number of one table comes from one run, with the
thread count pinned by ``torch.set_num_threads`` for each row.

Implementations ("impls") of each parameter-update op
------------------------------------------------------
``fused``            the public op ``fastcl.ops.<op>``: one call for the whole list.
``chain``            the eager in-place chain: the op written as a sequence of separate
                     in-place torch ops (``add_``, ``addcmul_``, ``div_`` ...) with the fewest
                     temporaries, applied tensor by tensor.
``loop``             the eager per-tensor Python loop of the specification,
                     ``fastcl.ops.reference.<op>`` (argument checks, out-of-place expression per
                     tensor, ``copy_`` into the destination).
``foreach``          the same chain written with ``torch._foreach_*`` ops over the whole list.
``compile``          ``torch.compile(chain, fullgraph=True, dynamic=False)`` (Inductor, C++).
``compile_foreach``  ``torch.compile`` of the ``foreach`` form.

Before anything is timed, every impl runs once on its own copy of the benchmark inputs and
its result is compared with ``fastcl.ops.reference`` on the same inputs (rtol 1e-5,
atol 1e-6): an impl that computes something else is reported as ``WRONG`` and not timed.

``prox_sgd`` is the out-of-place, differentiable step: every impl returns new tensors, whose
allocation (and, for large tensors, first-touch page faults) is part of what is timed.

Cases: one float32 tensor of 1e5, 1e6, 1e7 elements; the parameter list of the MLP
784-100-100-10 (6 tensors, 89,610 elements); the parameter list of the reduced ResNet-18 of
GEM / HAL / EMCL (:func:`resnet18_reduced_shapes`: 62 tensors, 1,109,240 elements).
``trajectory_shift_`` runs on the ResNet-18 list with T = 2, 8, 32 task learners.

Bytes moved (the GB/s column), per element of the parameter list, ``s`` = 4 bytes (float32):
the minimum traffic of the op, every tensor it touches read once and every tensor it writes
written once; temporaries of the unfused impls are not counted, so the GB/s of an unfused impl
is the *effective* bandwidth, comparable across impls.

==================== ======================================== ====================
op                   reads + writes                           bytes per element
==================== ======================================== ====================
prox_sgd_            params, grads, anchors, importance + params      5 s
prox_sgd             params, grads, anchors, importance + result      5 s
taylor_importance_   importance, grads, params + importance           4 s
emcl_meta_step_      params, fast_params, importance, meta_lrs,       8 s
                     grads + params, importance, meta_lrs
trajectory_shift_    phi, thetas (T) + phi, thetas (T)          (2 + 2T) s
copy_                src + dst                                        2 s
==================== ======================================== ====================

``% copy_`` is the op's GB/s over the GB/s of ``dst.copy_(src)`` (2 s per element) measured in
the same rounds, at the same thread count, on a copy whose footprint (src + dst) equals the
op's footprint (every distinct tensor it touches), so both run from the same level of the
memory hierarchy. It can exceed 100%: ``copy_`` writes to lines it never read (a
write-allocate read the count above does not see), an in-place op writes lines it just read.

Timing (:func:`time_interleaved`): per (op, case, threads), every impl that passed validation
and ``copy_`` are warmed up, then timed in rounds of one block of calls each (blocks of about
``min_run_time / 20`` seconds, the order rotating), until each has run ``min_run_time`` seconds
in at least 5 rounds; the figure is the median over blocks of the time per call. Interleaving
makes a change of machine load hit every impl of a row alike, so the ratios stay meaningful on
a busy machine even when the absolute times do not.

Memory ops (``ring_insert+sample``): a batch of B = 10 MNIST-size examples (784 float32) is
inserted into per-(task, class) rings (20 tasks x 10 classes x m = 5 slots, every ring full,
the batch goes to task 19), then n = 10 examples are sampled from all 20 tasks and gathered
(``index_select``). ``fused``: ``ring_insert_`` + ``ring_sample`` + ``index_select``; ``loop``:
a per-example Python loop that copies each example into its slot by indexing and bumps its
counter (the way Mammoth's buffer inserts), then ``torch.randint`` + ``index_select``;
``reference``: ``fastcl.ops.reference``. ``ring_sample``: the sample half alone, fused
(``ring_sample`` + ``index_select``) against ``randint`` + ``index_select``. With every ring
full, ``randint`` over the 1000 rows is the same distribution as ``ring_sample``.
``reservoir_insert_``: the batch into a 1000-row reservoir after 5000 examples seen, against
the per-example loop of algorithm R (one uniform draw per example, as Mammoth's reservoir).
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

import fastcl
from fastcl import ops as fops
from fastcl.ops import reference as ref

__all__ = [
    "Case",
    "Op",
    "OPS",
    "UPDATE_IMPLS",
    "resnet18_reduced_shapes",
    "mlp_shapes",
    "cases_for",
    "bytes_moved",
    "footprint",
    "validate",
    "expected_state",
    "clone_state",
    "fused_available",
    "check_device",
    "state_to",
    "plan",
    "time_fn",
    "run",
    "format_tables",
    "main",
]

FLOAT = torch.float32
ITEM = 4  # bytes of a float32

# Hyper-parameters of the benchmarked calls (fixed: the compiled impls specialise on them).
LR, PROX = 0.01, 0.5                                   # prox_sgd_
DECAY = 0.9                                            # taylor_importance_, emcl_meta_step_
LAM, R, ALPHA0, EPS, LR_MODE = 1.0, 0.5, 1e-3, 1e-8, 1  # emcl_meta_step_ (stabilised mode)
META_LR = 0.1                                          # trajectory_shift_

# Memory ops.
NUM_TASKS, NUM_CLASSES, RING_M, FEAT, BATCH, N_SAMPLE = 20, 10, 5, 784, 10, 10
RESERVOIR_CAP, RESERVOIR_SEEN = 1000, 5000

RTOL, ATOL = 1e-5, 1e-6

UPDATE_IMPLS = ("fused", "chain", "loop", "foreach", "compile", "compile_foreach")
MEMORY_IMPLS = ("fused", "loop", "reference", "randint")


# ============================================================================ shapes and cases
@functools.lru_cache(maxsize=None)
def resnet18_reduced_shapes(num_classes: int = 100, nf: int = 20) -> tuple[tuple[int, ...], ...]:
    """Parameter shapes of :class:`fastcl.models.ReducedResNet18` (62 tensors, 1,109,240 elements)."""
    from fastcl.models import ReducedResNet18, param_shapes

    with torch.device("meta"):
        model = ReducedResNet18(num_classes=num_classes, nf=nf)
    return tuple(param_shapes(model))


@functools.lru_cache(maxsize=None)
def mlp_shapes(sizes: tuple[int, ...] = (784, 100, 100, 10)) -> tuple[tuple[int, ...], ...]:
    """Parameter shapes of :class:`fastcl.models.MLP` (784-100-100-10: 6 tensors, 89,610 elements)."""
    from fastcl.models import MLP, param_shapes

    with torch.device("meta"):
        model = MLP(sizes)
    return tuple(param_shapes(model))


@dataclass(frozen=True)
class Case:
    """One benchmark input: the shapes of a parameter list and, for trajectory_shift_, T."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    T: int = 0

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def ntensors(self) -> int:
        return len(self.shapes)


def _list_cases(sizes: str) -> list[Case]:
    if sizes == "tiny":
        return [Case("tiny", ((1000,),)), Case("tiny-list", ((7, 5), (7,), (3, 7), (3,)))]
    single = [Case("1e5", ((10**5,),)), Case("1e6", ((10**6,),))]
    if sizes == "full":
        single.append(Case("1e7", ((10**7,),)))
    return single + [Case("mlp", mlp_shapes()), Case("resnet18", resnet18_reduced_shapes())]


def _shift_cases(sizes: str) -> list[Case]:
    if sizes == "tiny":
        return [Case("tiny-list T=2", ((7, 5), (7,), (3, 7), (3,)), T=2)]
    ts = (2, 8) if sizes == "quick" else (2, 8, 32)
    return [Case(f"resnet18 T={t}", resnet18_reduced_shapes(), T=t) for t in ts]


def _memory_cases(sizes: str) -> list[Case]:
    return [Case(f"B={BATCH}", ((BATCH, FEAT),))]


# ============================================================================ ops
State = dict  # name -> list[Tensor] (update ops) or Tensor / object (memory ops)


@dataclass
class Op:
    """A benchmarked op: how to make its inputs, its impls, and what it reads and writes."""

    name: str
    kind: str                                   # "update" or "memory"
    cases: Callable[[str], list[Case]]
    make: Callable[[Case, int], State]          # (case, seed) -> fresh inputs
    impls: dict[str, Callable[[State], Callable[[], Any]]]
    written: tuple[str, ...] = ()               # state entries written in place (update ops)
    n_read: Callable[[Case], int] = lambda c: 0   # tensors of the list read per element
    n_write: Callable[[Case], int] = lambda c: 0  # tensors of the list written per element
    n_distinct: Callable[[Case], int] = lambda c: 0  # distinct tensors touched per element
    check: Optional[Callable[[str, State, State, Any, Any], None]] = None  # memory ops
    mem_bytes: Optional[Callable[[Case], int]] = None
    doc: str = ""
    cpu_only: tuple[str, ...] = ()              # impls whose check holds on the CPU only


def bytes_moved(op: Op, case: Case) -> int:
    """Bytes the op must move for ``case``: every tensor it touches read once, every tensor it
    writes written once (see the table in the module docstring)."""
    if op.mem_bytes is not None:
        return op.mem_bytes(case)
    return (op.n_read(case) + op.n_write(case)) * case.numel * ITEM


def footprint(op: Op, case: Case) -> int:
    """Bytes of the distinct tensors the op touches (its working set)."""
    if op.mem_bytes is not None:
        return op.mem_bytes(case)
    return op.n_distinct(case) * case.numel * ITEM


def _randn(shapes, gen, scale=1.0, like=None):
    out = []
    for i, s in enumerate(shapes):
        t = torch.randn(s, generator=gen, dtype=FLOAT) * scale
        if like is not None:
            t += like[i]
        out.append(t)
    return out


def _rand(shapes, gen, low, high):
    return [torch.rand(s, generator=gen, dtype=FLOAT) * (high - low) + low for s in shapes]


def _compiled(fn, names):
    """Impl builder: torch.compile of ``fn`` called on the state lists ``names``.

    Compiles on the first call (the validation call), under the thread count then in force;
    the runner resets dynamo before every (op, case, threads) group so that no compiled graph
    is reused with another shape or thread count and no recompile limit is reached.
    """

    def build(state):
        cfn = torch.compile(fn, fullgraph=True, dynamic=False)
        args = [state[n] for n in names]
        return lambda: cfn(*args)

    return build


def _eager(fn, names):
    def build(state):
        args = [state[n] for n in names]
        return lambda: fn(*args)

    return build


def _update_impls(names, fused, chain, loop, foreach):
    """The UPDATE_IMPLS of an update op on the state lists ``names``: the fused op, its eager chain,
    the per-tensor loop of its reference, the ``_foreach`` form, and torch.compile of the chain and
    of the ``_foreach`` form."""
    return {
        "fused": _eager(fused, names),
        "chain": _eager(chain, names),
        "loop": _eager(loop, names),
        "foreach": _eager(foreach, names),
        "compile": _compiled(chain, names),
        "compile_foreach": _compiled(foreach, names),
    }


# ---------------------------------------------------------------------------- prox_sgd_
def _prox_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    p = _randn(case.shapes, g)
    return {
        "params": p,
        "grads": _randn(case.shapes, g, 0.1),
        "anchors": _randn(case.shapes, g, 0.01, like=p),
        "importance": _rand(case.shapes, g, 0.1, 1.1),
    }


def prox_chain(P, G, A, H):
    """p <- (p - lr g + c a) / (c + 1), c = prox h: in-place ops, tensor by tensor."""
    for p, g, a, h in zip(P, G, A, H):
        c = torch.mul(h, PROX)
        p.add_(g, alpha=-LR)
        p.addcmul_(c, a)
        c.add_(1.0)
        p.div_(c)


def prox_foreach(P, G, A, H):
    c = torch._foreach_mul(H, PROX)
    torch._foreach_add_(P, G, alpha=-LR)
    torch._foreach_addcmul_(P, c, A)
    torch._foreach_add_(c, 1.0)
    torch._foreach_div_(P, c)


_PROX = ("params", "grads", "anchors", "importance")
PROX_OP = Op(
    name="prox_sgd_",
    kind="update",
    cases=_list_cases,
    make=_prox_make,
    impls=_update_impls(_PROX,
                        fused=lambda P, G, A, H: fops.prox_sgd_(P, G, A, H, LR, PROX),
                        chain=prox_chain,
                        loop=lambda P, G, A, H: ref.prox_sgd_(P, G, A, H, LR, PROX),
                        foreach=prox_foreach),
    written=("params",),
    n_read=lambda c: 4,
    n_write=lambda c: 1,
    n_distinct=lambda c: 4,
    doc=f"lr={LR}, prox={PROX}",
)


# ---------------------------------------------------------------------------- prox_sgd (out of place)
def prox_oop_chain(P, G, A, H):
    """The out-of-place step tensor by tensor: new tensors, the inputs unchanged."""
    out = []
    for p, g, a, h in zip(P, G, A, H):
        c = torch.mul(h, PROX)
        n = torch.add(p, g, alpha=-LR)
        n.addcmul_(c, a)
        c.add_(1.0)
        out.append(n.div_(c))
    return out


def prox_oop_foreach(P, G, A, H):
    c = torch._foreach_mul(H, PROX)
    n = torch._foreach_add(P, G, alpha=-LR)
    torch._foreach_addcmul_(n, c, A)
    torch._foreach_add_(c, 1.0)
    torch._foreach_div_(n, c)
    return n


PROX_OOP_OP = Op(
    name="prox_sgd",
    kind="update",
    cases=_list_cases,
    make=_prox_make,
    impls=_update_impls(_PROX,
                        fused=lambda P, G, A, H: fops.prox_sgd(P, G, A, H, LR, PROX),
                        chain=prox_oop_chain,
                        loop=lambda P, G, A, H: ref.prox_sgd(P, G, A, H, LR, PROX),
                        foreach=prox_oop_foreach),
    written=(),  # returns new tensors; the check compares them and that the inputs are unchanged
    n_read=lambda c: 4,
    n_write=lambda c: 1,
    n_distinct=lambda c: 5,
    doc=f"out of place (returns new tensors: their allocation is part of the op), lr={LR}, prox={PROX}",
)


# ---------------------------------------------------------------------------- taylor_importance_
def _taylor_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {
        "importance": _rand(case.shapes, g, 0.0, 1.0),
        "grads": _randn(case.shapes, g, 0.1),
        "params": _randn(case.shapes, g),
    }


def taylor_chain(H, G, P):
    """h <- decay h + (1 - decay) |g p|: in-place ops, tensor by tensor."""
    for h, g, p in zip(H, G, P):
        t = torch.mul(g, p)
        t.abs_()
        h.mul_(DECAY)
        h.add_(t, alpha=1.0 - DECAY)


def taylor_foreach(H, G, P):
    t = torch._foreach_mul(G, P)
    torch._foreach_abs_(t)
    torch._foreach_mul_(H, DECAY)
    torch._foreach_add_(H, t, alpha=1.0 - DECAY)


_TAYLOR = ("importance", "grads", "params")
TAYLOR_OP = Op(
    name="taylor_importance_",
    kind="update",
    cases=_list_cases,
    make=_taylor_make,
    impls=_update_impls(_TAYLOR,
                        fused=lambda H, G, P: fops.taylor_importance_(H, G, P, DECAY),
                        chain=taylor_chain,
                        loop=lambda H, G, P: ref.taylor_importance_(H, G, P, DECAY),
                        foreach=taylor_foreach),
    written=("importance",),
    n_read=lambda c: 3,
    n_write=lambda c: 1,
    n_distinct=lambda c: 3,
    doc=f"decay={DECAY}",
)


# ---------------------------------------------------------------------------- emcl_meta_step_
def _emcl_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    p = _randn(case.shapes, g)
    return {
        "params": p,
        "fast_params": _randn(case.shapes, g, 0.01, like=p),
        "importance": _rand(case.shapes, g, 0.0, 1.0),
        "meta_lrs": _rand(case.shapes, g, 0.0, ALPHA0),
        "grads": _randn(case.shapes, g, 0.1),
    }


def emcl_chain(P, PK, H, A, G):
    """EMCL meta step (stabilised rates): in-place ops, tensor by tensor."""
    for p, pk, h, a, g in zip(P, PK, H, A, G):
        mg = torch.sub(p, pk)
        mg.mul_(h).mul_(LAM)            # G = lam h (theta0 - theta_k)
        t = torch.mul(g, p)
        t.abs_()                        # |g theta0_old|
        p.addcmul_(a, mg, value=-1.0)   # theta0 -= alpha G
        h.mul_(DECAY).add_(t, alpha=1.0 - DECAY)
        torch.add(h, EPS, out=t)
        t.reciprocal_().mul_(R).clamp_(max=1.0)
        torch.mul(t, ALPHA0, out=a)     # alpha = alpha0 min(1, r / (h + eps))


def emcl_foreach(P, PK, H, A, G):
    mg = torch._foreach_sub(P, PK)
    torch._foreach_mul_(mg, H)
    torch._foreach_mul_(mg, LAM)
    t = torch._foreach_mul(G, P)
    torch._foreach_abs_(t)
    torch._foreach_addcmul_(P, A, mg, value=-1.0)
    torch._foreach_mul_(H, DECAY)
    torch._foreach_add_(H, t, alpha=1.0 - DECAY)
    t = torch._foreach_add(H, EPS)
    torch._foreach_reciprocal_(t)
    torch._foreach_mul_(t, R)
    torch._foreach_clamp_max_(t, 1.0)
    torch._foreach_mul_(t, ALPHA0)
    torch._foreach_copy_(A, t)


_EMCL = ("params", "fast_params", "importance", "meta_lrs", "grads")


def _emcl_fused(P, PK, H, A, G):
    fops.emcl_meta_step_(P, PK, H, A, G, LAM, DECAY, R, LR_MODE, ALPHA0, EPS)


def _emcl_ref(P, PK, H, A, G):
    ref.emcl_meta_step_(P, PK, H, A, G, LAM, DECAY, R, LR_MODE, ALPHA0, EPS)


EMCL_OP = Op(
    name="emcl_meta_step_",
    kind="update",
    cases=_list_cases,
    make=_emcl_make,
    impls=_update_impls(_EMCL,
                        fused=_emcl_fused,
                        chain=emcl_chain,
                        loop=_emcl_ref,
                        foreach=emcl_foreach),
    written=("params", "importance", "meta_lrs"),
    n_read=lambda c: 5,
    n_write=lambda c: 3,
    n_distinct=lambda c: 5,
    doc=f"lr_mode=stabilised, lam={LAM}, decay={DECAY}, r={R}, alpha0={ALPHA0}, eps={EPS}",
)


# ---------------------------------------------------------------------------- trajectory_shift_
def _shift_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    phi = _randn(case.shapes, g)
    thetas = [p.unsqueeze(0) + 0.1 * torch.randn((case.T, *p.shape), generator=g, dtype=FLOAT) for p in phi]
    return {"phi": phi, "thetas": thetas}


def shift_chain(PHI, TH):
    """delta = lr (mean_T theta - phi); phi += delta; theta[t] += delta: tensor by tensor."""
    for p, th in zip(PHI, TH):
        d = th.mean(0)
        d.sub_(p).mul_(META_LR)
        p.add_(d)
        th.add_(d)


def shift_foreach(PHI, TH):
    """The foreach form. ``_foreach_*`` has no reduction over a dimension, so the mean over T is
    one ``mean(0)`` per tensor; the rest is foreach (the last add broadcasts delta over T)."""
    d = [th.mean(0) for th in TH]
    torch._foreach_sub_(d, PHI)
    torch._foreach_mul_(d, META_LR)
    torch._foreach_add_(PHI, d)
    torch._foreach_add_(TH, d)


_SHIFT = ("phi", "thetas")
SHIFT_OP = Op(
    name="trajectory_shift_",
    kind="update",
    cases=_shift_cases,
    make=_shift_make,
    impls=_update_impls(_SHIFT,
                        fused=lambda PHI, TH: fops.trajectory_shift_(PHI, TH, META_LR, True),
                        chain=shift_chain,
                        loop=lambda PHI, TH: ref.trajectory_shift_(PHI, TH, META_LR, True),
                        foreach=shift_foreach),
    written=("phi", "thetas"),
    n_read=lambda c: 1 + c.T,
    n_write=lambda c: 1 + c.T,
    n_distinct=lambda c: 1 + c.T,
    doc=f"meta_lr={META_LR}, shift=True",
)


# ---------------------------------------------------------------------------- memory ops
ALL_TASKS = list(range(NUM_TASKS))
RING_ROWS = NUM_TASKS * NUM_CLASSES * RING_M
INSERT_TASK = NUM_TASKS - 1


def _ring_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {
        "data": torch.randn(RING_ROWS, FEAT, generator=g, dtype=FLOAT),
        # every ring full (and some already wrapped): the steady state of a long stream
        "counts": torch.randint(RING_M, 4 * RING_M, (NUM_TASKS, NUM_CLASSES), generator=g),
        "x": torch.randn(BATCH, FEAT, generator=g, dtype=FLOAT),
        "y": torch.randint(0, NUM_CLASSES, (BATCH,), generator=g),
        "gen": torch.Generator().manual_seed(seed + 1),
    }


def ring_insert_loop(data, counts, x, y, task):
    """Per-example insert: each example copied into its ring slot by indexing (Mammoth style)."""
    for i in range(x.shape[0]):
        c = int(y[i])
        slot = (task * NUM_CLASSES + c) * RING_M + int(counts[task, c]) % RING_M
        data[slot] = x[i]
        counts[task, c] += 1


def sample_randint(data, gen):
    """``randint`` + ``index_select`` over the filled rows (all rows: every ring is full)."""
    idx = torch.randint(0, data.shape[0], (N_SAMPLE,), generator=gen)
    return idx, data.index_select(0, idx)


def ring_insert_fused(data, counts, x, y, task):
    """The public fused op (looked up at call time, so tests can substitute it)."""
    fops.ring_insert_(data, counts, x, y, task)


def sample_fused(data, counts, gen):
    """``ring_sample_rows``: the draw and the gather of the rows in one call."""
    rows, _, _, idx = fops.ring_sample_rows(data, counts, ALL_TASKS, N_SAMPLE, gen)
    return idx, rows


def sample_reference(data, counts, gen):
    idx = ref.ring_sample(counts, RING_M, ALL_TASKS, N_SAMPLE, gen)
    return idx, data.index_select(0, idx)


def _ring_impl(insert, sample):
    def build(s):
        data, counts, x, y, gen = s["data"], s["counts"], s["x"], s["y"], s["gen"]
        if insert is None:
            if sample is sample_randint:
                return lambda: sample(data, gen)
            return lambda: sample(data, counts, gen)

        def step():
            insert(data, counts, x, y, INSERT_TASK)
            if sample is sample_randint:
                return sample(data, gen)
            return sample(data, counts, gen)

        return step

    return build


def _check_sample(idx, rows, state):
    if idx.dtype != torch.int64 or idx.shape != (N_SAMPLE,):
        raise AssertionError(f"sample returned {idx.dtype} {tuple(idx.shape)}; expected int64 [{N_SAMPLE}]")
    if int(idx.min()) < 0 or int(idx.max()) >= RING_ROWS:
        raise AssertionError(f"sampled rows outside [0, {RING_ROWS})")
    torch.testing.assert_close(rows, state["data"][idx], rtol=0, atol=0)


def _ring_check(impl: str, state: State, expected: State, result, expected_result) -> None:
    torch.testing.assert_close(state["data"], expected["data"], rtol=0, atol=0)
    torch.testing.assert_close(state["counts"], expected["counts"], rtol=0, atol=0)
    _check_sample(*result, state)


def _ring_expected(state: State):
    ref.ring_insert_(state["data"], state["counts"], state["x"], state["y"], INSERT_TASK)
    return sample_reference(state["data"], state["counts"], state["gen"])


def _ring_bytes(case: Case) -> int:
    # insert: x read + rows written + labels read + counter read/written, per example;
    # sample: indices written and read, rows read and written.
    return BATCH * (2 * FEAT * ITEM + 8 + 16) + N_SAMPLE * (16 + 2 * FEAT * ITEM)


def _sample_bytes(case: Case) -> int:
    return N_SAMPLE * (16 + 2 * FEAT * ITEM)


RING_OP = Op(
    name="ring_insert+sample",
    kind="memory",
    cases=_memory_cases,
    make=_ring_make,
    impls={
        "fused": _ring_impl(ring_insert_fused, sample_fused),
        "loop": _ring_impl(ring_insert_loop, sample_randint),
        "reference": _ring_impl(ref.ring_insert_, sample_reference),
    },
    check=_ring_check,
    mem_bytes=_ring_bytes,
    doc=f"{NUM_TASKS} tasks x {NUM_CLASSES} classes x m={RING_M}, insert B={BATCH} into task "
        f"{INSERT_TASK}, sample n={N_SAMPLE} from all tasks + index_select",
)

SAMPLE_OP = Op(
    name="ring_sample",
    kind="memory",
    cases=_memory_cases,
    make=_ring_make,
    impls={
        "fused": _ring_impl(None, sample_fused),
        "reference": _ring_impl(None, sample_reference),
        "randint": _ring_impl(None, sample_randint),
    },
    check=lambda impl, s, e, r, er: _check_sample(*r, s),
    mem_bytes=_sample_bytes,
    doc=f"n={N_SAMPLE} from {RING_ROWS} full slots + index_select",
)


def _reservoir_make(case: Case, seed: int) -> State:
    g = torch.Generator().manual_seed(seed)
    return {
        "data": torch.randn(RESERVOIR_CAP, FEAT, generator=g, dtype=FLOAT),
        "labels": torch.randint(0, NUM_CLASSES, (RESERVOIR_CAP,), generator=g),
        "tasks": torch.randint(0, NUM_TASKS, (RESERVOIR_CAP,), generator=g),
        "x": torch.randn(BATCH, FEAT, generator=g, dtype=FLOAT),
        "y": torch.randint(0, NUM_CLASSES, (BATCH,), generator=g),
        "gen": torch.Generator().manual_seed(seed + 1),
    }


def reservoir_loop(data, labels, tasks, x, y, task, n_seen, gen):
    """Algorithm R one example at a time, one uniform draw per example (Mammoth style)."""
    cap = data.shape[0]
    slots = []
    for i in range(x.shape[0]):
        s = n_seen + i
        if s < cap:
            j = s
        else:
            j = int(torch.rand((), generator=gen, dtype=torch.float64) * (s + 1))
        if j < cap:
            data[j] = x[i]
            labels[j] = y[i]
            tasks[j] = task
            slots.append(j)
        else:
            slots.append(-1)
    return torch.tensor(slots)


def _reservoir_impl(fn_getter):
    def build(s):
        fn = fn_getter()
        args = (s["data"], s["labels"], s["tasks"], s["x"], s["y"], INSERT_TASK, RESERVOIR_SEEN, s["gen"])
        return lambda: fn(*args)

    return build


def _reservoir_expected(state: State):
    return ref.reservoir_insert_(state["data"], state["labels"], state["tasks"], state["x"], state["y"],
                                 INSERT_TASK, RESERVOIR_SEEN, state["gen"])


def _reservoir_check(impl, state, expected, result, expected_result):
    # Every impl draws B uniforms from a generator seeded alike: the same slots, the same state.
    torch.testing.assert_close(result, expected_result, rtol=0, atol=0)
    for k in ("data", "labels", "tasks"):
        torch.testing.assert_close(state[k], expected[k], rtol=0, atol=0)


RESERVOIR_OP = Op(
    name="reservoir_insert_",
    kind="memory",
    cases=_memory_cases,
    make=_reservoir_make,
    impls={
        "fused": _reservoir_impl(lambda: fops.reservoir_insert_),  # looked up when built
        "loop": _reservoir_impl(lambda: reservoir_loop),
        "reference": _reservoir_impl(lambda: ref.reservoir_insert_),
    },
    check=_reservoir_check,
    mem_bytes=lambda c: BATCH * (2 * FEAT * ITEM + 8 * 5),
    # one uniform per call from a CUDA (Philox) generator is not the same sequence as B at once
    cpu_only=("loop",),
    doc=f"capacity {RESERVOIR_CAP}, {RESERVOIR_SEEN} seen, B={BATCH}",
)

_EXPECTED = {RING_OP.name: _ring_expected, SAMPLE_OP.name: _ring_expected,
             RESERVOIR_OP.name: _reservoir_expected}

OPS: dict[str, Op] = {op.name: op for op in (PROX_OP, PROX_OOP_OP, TAYLOR_OP, EMCL_OP, SHIFT_OP, RING_OP, SAMPLE_OP,
                                             RESERVOIR_OP)}


def cases_for(op: Op, sizes: str) -> list[Case]:
    """The cases of ``op`` for ``sizes`` in {"full", "quick", "tiny"}."""
    if sizes not in ("full", "quick", "tiny"):
        raise ValueError(f"sizes must be 'full', 'quick' or 'tiny', got {sizes!r}")
    return op.cases(sizes)


# ============================================================================ validation
def clone_state(state: State) -> State:
    out = {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            out[k] = v.clone()
        elif isinstance(v, list):
            out[k] = [t.clone() for t in v]
        elif isinstance(v, torch.Generator):
            g = torch.Generator(device=v.device)
            g.set_state(v.get_state())
            out[k] = g
        else:
            out[k] = v
    return out


def state_to(state: State, device: torch.device) -> State:
    """``state`` (made on the CPU by an op's ``make``) with every tensor moved to ``device`` and
    every generator replaced by one of ``device`` with the same seed."""
    if device.type == "cpu":
        return state
    out = {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device)
        elif isinstance(v, list):
            out[k] = [t.to(device) for t in v]
        elif isinstance(v, torch.Generator):
            out[k] = torch.Generator(device=device).manual_seed(v.initial_seed())
        else:
            out[k] = v
    return out


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a ValueError saying why it cannot be benchmarked here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device: {err}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"--device must be 'cpu' or 'cuda[:N]', got {str(device)!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA device "
                         f"(torch.version.cuda = {torch.version.cuda})")
    if not fops.cuda_built():
        raise ValueError(f"--device {device}: fastcl._C was built without its CUDA kernels "
                         "(rebuild on a CUDA torch with nvcc on the PATH; see csrc/cuda/README.md)")
    return dev


def expected_state(op: Op, state: State) -> tuple[State, Any]:
    """The state after one reference call on a copy of ``state`` (and its result)."""
    exp = clone_state(state)
    if op.kind == "update":
        return exp, OPS_REF[op.name](exp)
    return exp, _EXPECTED[op.name](exp)


OPS_REF: dict[str, Callable[[State], Any]] = {
    "prox_sgd_": lambda s: ref.prox_sgd_(s["params"], s["grads"], s["anchors"], s["importance"], LR, PROX),
    "prox_sgd": lambda s: ref.prox_sgd(s["params"], s["grads"], s["anchors"], s["importance"], LR, PROX),
    "taylor_importance_": lambda s: ref.taylor_importance_(s["importance"], s["grads"], s["params"], DECAY),
    "emcl_meta_step_": lambda s: _emcl_ref(s["params"], s["fast_params"], s["importance"], s["meta_lrs"], s["grads"]),
    "trajectory_shift_": lambda s: ref.trajectory_shift_(s["phi"], s["thetas"], META_LR, True),
}


def validate(op: Op, impl: str, state: State, fn: Callable[[], Any], expected: tuple[State, Any]) -> Any:
    """Calls ``fn`` once (on ``state``) and raises AssertionError unless it did what the
    reference did to a copy of the same inputs. Returns the call's result."""
    result = fn()
    exp, exp_result = expected
    if op.kind == "update":
        pairs = [(f"{name}[{i}]", a, e) for name in op.written for i, (a, e) in enumerate(zip(state[name], exp[name]))]
        if exp_result is not None:  # out-of-place: the returned tensors, and every input unchanged
            if not isinstance(result, (list, tuple)) or len(result) != len(exp_result):
                raise AssertionError(f"{op.name}/{impl}: returned {type(result).__name__}, expected "
                                     f"{len(exp_result)} tensors: differs from the reference")
            pairs += [(f"result[{i}]", a, e) for i, (a, e) in enumerate(zip(result, exp_result))]
            pairs += [(f"{name}[{i}]", a, e) for name in state for i, (a, e) in enumerate(zip(state[name], exp[name]))]
        for what, a, e in pairs:
            try:
                torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)
            except AssertionError as err:
                raise AssertionError(f"{op.name}/{impl}: {what} differs from the reference: {err}") from None
    else:
        try:
            op.check(impl, state, exp, result, exp_result)
        except AssertionError as err:
            raise AssertionError(f"{op.name}/{impl}: differs from the reference: {err}") from None
    return result


# ============================================================================ timing
def time_fn(fn: Callable[[], Any], threads: int, min_run_time: float, warmup: int = 3,
            sync: Callable[[], None] = lambda: None) -> dict:
    """Median seconds per call of one ``fn`` at ``threads`` threads (see :func:`time_interleaved`)."""
    return time_interleaved({"fn": fn}, threads, min_run_time, warmup, sync=sync)["fn"]


def time_interleaved(fns: dict[str, Callable[[], Any]], threads: int, min_run_time: float, warmup: int = 3,
                     min_rounds: int = 5, max_rounds: int = 400, max_time: Optional[float] = None,
                     sync: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """Times several callables *interleaved*, so that a change of machine load hits all of them.

    Each callable is warmed up (``warmup`` calls; the fastest of them estimates its cost), then
    given a block size of ``n`` calls lasting about ``min_run_time / 20``. Rounds then time one
    block of every callable (the order rotates from round to round) until every callable has
    run for ``min_run_time`` seconds in at least ``min_rounds`` rounds. The result per callable:
    ``median_s`` (median over the blocks of seconds per call), ``iqr_s``, ``min_s``, ``runs``
    (blocks), ``per_run`` (calls per block) and ``capped`` (True when the rounds stopped at
    ``max_time``, default ``3 * min_run_time * len(fns)`` seconds, after at least 3 rounds: a
    machine so busy that calls stall; the figures are then rough); or ``error`` if a call raised.
    ``sync`` is called before a clock is read (``torch.cuda.synchronize`` for CUDA work, so that a
    block's time covers its kernels, not only their launches).
    """
    if max_time is None:
        max_time = 3.0 * min_run_time * max(1, len(fns))
    torch.set_num_threads(threads)
    clock = time.perf_counter
    block_s = max(min_run_time / 20, 1e-5)
    number, samples, total, out = {}, {}, {}, {}
    for name, fn in fns.items():
        best = math.inf
        try:
            for _ in range(max(1, warmup)):
                sync()
                t0 = clock()
                fn()
                sync()
                best = min(best, clock() - t0)
        except Exception as err:  # noqa: BLE001
            out[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        number[name] = max(1, int(block_s / max(best, 1e-9)))
        samples[name], total[name] = [], 0.0
    names = list(number)
    rounds, start, capped = 0, clock(), False
    while names and rounds < max_rounds and (rounds < min_rounds or min(total[k] for k in names) < min_run_time):
        if rounds >= 3 and clock() - start > max_time:
            capped = True
            break
        order = names[rounds % len(names):] + names[: rounds % len(names)]
        for name in order:
            fn, n = fns[name], number[name]
            try:
                sync()
                t0 = clock()
                for _ in range(n):
                    fn()
                sync()
                dt = clock() - t0
            except Exception as err:  # noqa: BLE001
                out[name] = {"error": f"{type(err).__name__}: {err}"}
                names.remove(name)
                continue
            samples[name].append(dt / n)
            total[name] += dt
        rounds += 1
    for name in number:
        if name in out:
            continue
        xs = torch.tensor(samples[name], dtype=torch.float64)
        q = torch.quantile(xs, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        out[name] = {"median_s": q[1], "iqr_s": q[2] - q[0],
                     "min_s": float(xs.min()), "runs": len(xs), "per_run": number[name], "capped": capped}
    return out


def copy_callable(footprint_bytes: int, device: str | torch.device = "cpu") -> tuple[Callable[[], Any], int]:
    """``dst.copy_(src)`` with src + dst = ``footprint_bytes`` on ``device``, and the bytes it moves."""
    n = max(1, footprint_bytes // (2 * ITEM))
    src, dst = torch.randn(n, dtype=FLOAT, device=device), torch.empty(n, dtype=FLOAT, device=device)
    return (lambda: dst.copy_(src)), 2 * n * ITEM


# ============================================================================ runner
def fused_available(op: Op, device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``fused`` runs a compiled kernel on ``device`` (not the reference fallback or nothing)."""
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    if fops.backend() == "reference":
        return False, "extension not loaded: fused == reference fallback"
    names = {"ring_insert+sample": ("ring_insert_", "ring_sample"), "ring_sample": ("ring_sample",),
             "reservoir_insert_": ("reservoir_insert_",)}.get(op.name, (op.name,))
    for n in names:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcl::{n}", key):
            return False, f"no {key} kernel registered for fastcl::{n}"
    return True, ""


def plan(ops: Optional[Sequence[str]] = None, sizes: str = "full", compile: bool = True,
         cases: Optional[Sequence[str]] = None, device: str | torch.device = "cpu") -> list[tuple[Op, Case, list[str]]]:
    """The (op, case, impls) groups a run measures on ``device``."""
    on_cpu = torch.device(device).type == "cpu"
    names = list(ops) if ops else list(OPS)
    for n in names:
        if n not in OPS:
            raise ValueError(f"unknown op {n!r}; expected one of {sorted(OPS)}")
    out = []
    for n in names:
        op = OPS[n]
        impls = [i for i in op.impls if (compile or not i.startswith("compile")) and (on_cpu or i not in op.cpu_only)]
        for case in cases_for(op, sizes):
            if cases and case.name not in cases and case.name.split(" ")[0] not in cases:
                continue
            out.append((op, case, impls))
    return out


@dataclass
class Results:
    meta: dict
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"meta": self.meta, "notes": self.notes, "rows": self.rows}


def run(ops: Optional[Sequence[str]] = None, sizes: str = "full", threads: Sequence[int] = (1, 2),
        compile: bool = True, min_run_time: float = 0.5, cases: Optional[Sequence[str]] = None,
        progress: bool = True, seed: int = 0, device: str | torch.device = "cpu") -> Results:
    """Validates, then times, every (op, case, impl) of the plan at every thread count.

    ``device`` is ``"cpu"`` or a CUDA device (:func:`check_device`): the inputs are made on the
    CPU, moved there, and the clock is read after ``torch.cuda.synchronize``; on CUDA the thread
    count only sets the host side and one count is measured.

    For each (op, case, threads) every impl gets its own copy of the inputs, is called once and
    compared with the reference (:func:`validate`), then all impls that passed (and ``copy_`` at
    the op's footprint) are timed interleaved (:func:`time_interleaved`). Rows hold, per
    (op, case, threads, impl): ``us`` (median microseconds per call), ``gbps`` (bytes moved /
    time), ``copy_gbps`` and ``pct_copy``; or ``error`` when the impl could not run here or
    computed something else than the reference (``WRONG: ...``: not timed).
    """
    dev = check_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        threads = list(threads)[:1]
    groups = plan(ops, sizes, compile, cases, dev)
    total = sum(len(impls) + 1 for _, _, impls in groups) * len(threads)
    saved_threads = torch.get_num_threads()
    res = Results(meta={
        "fastcl": fastcl.__version__, "torch": torch.__version__, "backend": fops.backend(),
        "cpu_isa": fops.cpu_isa(), "machine": platform.machine(), "processor": platform.processor(),
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "sizes": sizes, "threads": list(threads), "compile": compile, "min_run_time_s": min_run_time,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timer": "interleaved blocks, median seconds per call (fastcl.benchmarks.ops.time_interleaved)",
    })
    if sizes != "full":
        res.notes.append(f"sizes={sizes}: " + ("1e7 and T=32 skipped" if sizes == "quick" else "test sizes"))
    if not compile:
        res.notes.append("torch.compile impls skipped (--quick or --no-compile)")
    if fops.backend() == "reference":
        res.notes.append("the extension is not loaded: every 'fused' row is the reference fallback")
    if dev.type == "cuda":
        res.notes.append(f"device {dev} ({res.meta['device_name']}): times after torch.cuda.synchronize; "
                         "threads are the host's only")
    bar = _progress(total, progress)
    unavailable: dict[str, str] = {}
    try:
        for op, case, impls in groups:
            ok, why = fused_available(op, dev)
            if not ok:
                unavailable[op.name] = why
            base = state_to(op.make(case, seed), dev)
            expected = expected_state(op, base)
            nbytes, fbytes = bytes_moved(op, case), footprint(op, case)
            for t in threads:
                torch.set_num_threads(t)
                torch._dynamo.reset()
                rows, fns = {}, {}
                for impl in impls:
                    bar.set(f"{op.name} {case.name} t={t} {impl}: validate" + (" + compile" if impl.startswith("compile") else ""))
                    row = {"op": op.name, "case": case.name, "threads": t, "impl": impl, "bytes": nbytes,
                           "footprint": fbytes, "numel": case.numel, "tensors": case.ntensors}
                    try:
                        state = clone_state(base)
                        t0 = time.perf_counter()
                        fn = op.impls[impl](state)
                        validate(op, impl, state, fn, expected)
                        row["first_call_s"] = time.perf_counter() - t0
                        fns[impl] = fn
                    except AssertionError as err:
                        row["error"] = "WRONG: " + str(err).splitlines()[0][:300]
                    except Exception as err:  # noqa: BLE001  an impl that cannot run here
                        row["error"] = f"{type(err).__name__}: " + (str(err).splitlines() or [""])[0][:300]
                    rows[impl] = row
                    bar.step()
                copy_bytes = None
                if op.kind == "update" and fns:
                    fns["copy_"], copy_bytes = copy_callable(fbytes, dev)
                    rows["copy_"] = {"op": op.name, "case": case.name, "threads": t, "impl": "copy_",
                                     "bytes": copy_bytes, "footprint": fbytes, "numel": copy_bytes // (2 * ITEM),
                                     "tensors": 2}
                bar.set(f"{op.name} {case.name} t={t}: timing {len(fns)} impls interleaved")
                timings = time_interleaved(fns, t, min_run_time, sync=sync)
                for impl, m in timings.items():
                    row = rows[impl]
                    if "error" in m:
                        row["error"] = m["error"].splitlines()[0][:300]
                        continue
                    row.update(us=m["median_s"] * 1e6, iqr_us=m["iqr_s"] * 1e6, min_us=m["min_s"] * 1e6,
                               runs=m["runs"], per_run=m["per_run"], capped=m["capped"],
                               gbps=row["bytes"] / m["median_s"] / 1e9)
                copy_gbps = rows.get("copy_", {}).get("gbps")
                for impl, row in rows.items():
                    if copy_gbps and "gbps" in row:
                        row.update(copy_gbps=copy_gbps, pct_copy=100.0 * row["gbps"] / copy_gbps)
                    res.rows.append(row)
                bar.step()
                del fns, rows
    finally:
        bar.close()
        torch.set_num_threads(saved_threads)
        torch._dynamo.reset()
    for name, why in unavailable.items():
        res.notes.append(f"{name}: {why}")
    capped = sorted({f"{r['op']} {r['case']} t={r['threads']}" for r in res.rows if r.get("capped")})
    if capped:
        res.notes.append("timing stopped at its time cap (calls stalling: a busy machine; rough figures): "
                         + ", ".join(capped))
    for row in res.rows:
        if "error" not in row:
            continue
        if row["impl"] == "fused" and row["op"] in unavailable and not row["error"].startswith("WRONG"):
            continue  # said once above
        res.notes.append(f"{row['op']} {row['case']} t={row['threads']} {row['impl']}: {row['error'][:200]}")
    return res


class _progress:
    """A one-line progress indication on stderr (tqdm when available)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.n, self.total = 0, total
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="row", dynamic_ncols=True, leave=False)
            except ImportError:  # pragma: no cover
                self.bar = None

    def set(self, what: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(what)
        else:  # pragma: no cover
            print(f"[{self.n + 1}/{self.total}] {what}", file=sys.stderr, flush=True)

    def step(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ============================================================================ tables
def _index(rows):
    return {(r["op"], r["case"], r["threads"], r["impl"]): r for r in rows}


def _fmt_us(r) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "WRONG" if r["error"].startswith("WRONG") else "n/a"
    us = r["us"]
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def _speedup(other, fused) -> str:
    if other is None or fused is None or "us" not in other or "us" not in fused:
        return "-"
    return f"{other['us'] / fused['us']:.2f}x"


def update_table(res: Results) -> tuple[list[str], list[list[str]]]:
    idx = _index(res.rows)
    header = ["op", "case", "thr", "fused us", "GB/s", "% copy_", "copy_ GB/s", "chain us", "loop us", "foreach us",
              "compile us", "compile(foreach) us", "vs chain", "vs loop", "vs foreach", "vs compile",
              "vs compile(foreach)"]
    body = []
    seen = []
    for r in res.rows:
        if OPS[r["op"]].kind != "update":
            continue
        key = (r["op"], r["case"], r["threads"])
        if key in seen:
            continue
        seen.append(key)
        get = lambda impl: idx.get(key + (impl,))  # noqa: E731
        f = get("fused")
        ok = f is not None and "us" in f
        body.append([
            r["op"], r["case"], str(r["threads"]), _fmt_us(f),
            f"{f['gbps']:.1f}" if ok else "-", f"{f['pct_copy']:.0f}%" if ok and "pct_copy" in f else "-",
            f"{get('copy_')['gbps']:.1f}" if get("copy_") and "gbps" in get("copy_") else "-",
            _fmt_us(get("chain")), _fmt_us(get("loop")), _fmt_us(get("foreach")), _fmt_us(get("compile")),
            _fmt_us(get("compile_foreach")),
            _speedup(get("chain"), f), _speedup(get("loop"), f), _speedup(get("foreach"), f),
            _speedup(get("compile"), f), _speedup(get("compile_foreach"), f),
        ])
    return header, body


def memory_table(res: Results) -> tuple[list[str], list[list[str]]]:
    idx = _index(res.rows)
    header = ["op", "case", "thr", "fused us", "loop us", "reference us", "randint+index_select us",
              "vs loop", "vs reference", "vs randint"]
    body, seen = [], []
    for r in res.rows:
        if OPS[r["op"]].kind != "memory":
            continue
        key = (r["op"], r["case"], r["threads"])
        if key in seen:
            continue
        seen.append(key)
        get = lambda impl: idx.get(key + (impl,))  # noqa: E731
        f = get("fused")
        body.append([r["op"], r["case"], str(r["threads"]), _fmt_us(f), _fmt_us(get("loop")),
                     _fmt_us(get("reference")), _fmt_us(get("randint")), _speedup(get("loop"), f),
                     _speedup(get("reference"), f), _speedup(get("randint"), f)])
    return header, body


def _render(header, body, markdown: bool) -> str:
    if not body:
        return ""
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in body])


def format_tables(res: Results, markdown: bool = False) -> str:
    """The update-op table and the memory-op table, with the run's facts and notes."""
    m = res.meta
    out = [f"fastcl {m['fastcl']}, torch {m['torch']}, backend {m['backend']}, cpu ISA {m['cpu_isa']}, "
           f"device {m.get('device', 'cpu')}, sizes {m['sizes']}, threads {','.join(map(str, m['threads']))}, min run time {m['min_run_time_s']} s"]
    out.append("times: median microseconds per call; 'vs X' = time of X / time of fused (higher: fused faster); "
                "GB/s and % copy_ of the fused op (bytes: see fastcl.benchmarks.ops)")
    u = _render(*update_table(res), markdown)
    if u:
        out += ["", u]
    mt = _render(*memory_table(res), markdown)
    if mt:
        out += ["", mt]
    if res.notes:
        out += [""] + [("- " if markdown else "note: ") + n for n in res.notes]
    return "\n".join(out)


# ============================================================================ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a subset that runs in about a minute: no 1e7 / T=32 cases, no torch.compile, short timing")
    p.add_argument("--sizes", choices=("full", "quick", "tiny"), default=None,
                   help="case sizes (default: quick with --quick, else full; tiny is for tests)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts, all measured in one run (1,2)")
    p.add_argument("--ops", default=None, help=f"comma-separated subset of: {', '.join(OPS)}")
    p.add_argument("--cases", default=None, help="comma-separated subset of case names (1e6, resnet18, ...)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="include the torch.compile impls (default unless --quick)")
    g.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile impls")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed calls per row (default 0.5; 0.1 with --quick; 0.005 with tiny sizes)")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--json", metavar="PATH", default=None, help="also write every measurement as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress indication on stderr")
    p.add_argument("--device", default="cpu",
                   help="where the ops run: cpu (default) or cuda[:N] (needs fastcl built with its CUDA kernels)")


def run_from_args(args: argparse.Namespace) -> int:
    sizes = args.sizes or ("quick" if args.quick else "full")
    compile_ = (not args.quick and sizes != "tiny") if args.compile is None else args.compile
    min_time = args.min_time
    if min_time is None:
        min_time = 0.005 if sizes == "tiny" else (0.1 if args.quick else 0.5)
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        print(f"--threads must be comma-separated integers, got {args.threads!r}", file=sys.stderr)
        return 2
    if not threads or min(threads) < 1:
        print("--threads needs at least one count >= 1", file=sys.stderr)
        return 2
    ops = args.ops.split(",") if args.ops else None
    cases = args.cases.split(",") if args.cases else None
    try:
        res = run(ops=ops, sizes=sizes, threads=threads, compile=compile_, min_run_time=min_time, cases=cases,
                  progress=not args.no_progress, device=args.device)
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(format_tables(res, markdown=args.markdown))
    if args.json:
        from fastcl.rundir import atomic_write_json

        atomic_write_json(args.json, res.to_json())
    wrong = [r for r in res.rows if r.get("error", "").startswith("WRONG")]
    return 1 if wrong else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastcl.benchmarks.ops", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
