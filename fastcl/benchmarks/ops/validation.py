"""The benchmark's registry of ops and its check of every impl against the reference before
anything is timed (an impl that computes something else is reported WRONG)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from fastcl import ops as fops
from fastcl.ops import reference as ref

from .cases import ATOL, DECAY, LR, META_LR, PROX, RTOL, Case, Op, State
from .update_ops import EMCL_OP, PROX_OOP_OP, PROX_OP, SHIFT_OP, TAYLOR_OP, _emcl_ref
from .memory_ops import RESERVOIR_OP, RING_OP, SAMPLE_OP, _reservoir_expected, _ring_expected


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
