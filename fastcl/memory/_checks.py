"""Argument checks shared by the episodic memories: each raises ValueError / TypeError naming
the argument. They read only host-side metadata (shapes, dtypes, devices, Python ints), so they
never synchronise with a GPU."""

from __future__ import annotations

import operator
from typing import Iterable, Optional

import torch
from torch import Tensor


def as_int(name: str, value, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` as a Python int in ``[low, high)``; bools and floats are rejected."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    if high is not None and v >= high:
        raise ValueError(f"{name} must be < {high}, got {v}")
    return v


def as_shape(name: str, shape) -> tuple[int, ...]:
    """An example shape: an int or a sequence of ints >= 0 (``()`` for scalar examples)."""
    if isinstance(shape, (int, torch.SymInt)) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise TypeError(f"{name} must be a sequence of ints, got {type(shape).__name__}")
    return tuple(as_int(f"{name}[{i}]", s, low=0) for i, s in enumerate(shape))


def as_dtype(name: str, dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {type(dtype).__name__}")
    if dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"{name} must be a real floating or integer dtype, got {dtype}")
    return dtype


def as_task_list(name: str, tasks, num_tasks: Optional[int]) -> list[int]:
    """Task ids from an iterable of ints (a list, a range, ...), each in ``[0, num_tasks)``."""
    if isinstance(tasks, (Tensor, str, bytes)) or not isinstance(tasks, Iterable):
        raise TypeError(f"{name} must be an iterable of int task ids (a list or a range), "
                        f"got {type(tasks).__name__}")
    out = []
    for t in tasks:
        if isinstance(t, bool):
            raise TypeError(f"{name} must hold int task ids, got bool")
        try:
            v = operator.index(t)
        except TypeError:
            raise TypeError(f"{name} must hold int task ids, got {type(t).__name__}") from None
        if v < 0 or (num_tasks is not None and v >= num_tasks):
            bound = f"in [0, {num_tasks})" if num_tasks is not None else ">= 0"
            raise ValueError(f"{name} must hold task ids {bound}, got {v}")
        out.append(v)
    return out


def check_batch(x, y, example_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> int:
    """x: ``[B, *example_shape]`` of ``dtype`` on ``device``; y: ``[B]`` int64 there. Returns B."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a Tensor, got {type(y).__name__}")
    if x.dim() != len(example_shape) + 1 or tuple(x.shape[1:]) != example_shape:
        want = ", ".join(["B"] + [str(s) for s in example_shape])
        raise ValueError(f"x has shape {tuple(x.shape)}; expected [{want}]")
    if x.dtype != dtype:
        raise TypeError(f"x has dtype {x.dtype} but the memory stores {dtype}")
    if y.dtype != torch.int64:
        raise TypeError(f"y has dtype {y.dtype}; expected torch.int64 labels")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y has shape {tuple(y.shape)}; expected [{x.shape[0]}] (one label per row of x)")
    if x.device != device or y.device != device:
        raise ValueError(f"x and y must be on the memory's device {device}, got x on {x.device}, y on {y.device}")
    return x.shape[0]

