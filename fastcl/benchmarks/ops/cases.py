"""Benchmark inputs of the fused-op benchmark: the constants of the benchmarked calls, the shapes
and cases, :class:`Op` (how to make an op's inputs, its impls, what it reads and writes) and the
impl builders shared by the update ops."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


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
