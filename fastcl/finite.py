"""Stop a training loop on NaN / inf inputs or losses instead of training on garbage.

Every training loop of fastcl (:func:`fastcl.train.run_stream`, the MAML, CTS / Reptile and
FTML loops) feeds a :class:`FiniteGuard` with what each step saw and produced, and checks it at
natural boundaries (end of a task, a checkpoint, a repetition). Recording does not synchronise
with the device: a tensor is reduced on its own device to one flag, and the flags are read back
together, once per check (or every ``every`` records), which also locates the first bad step.
A float (a loss the learner already returned as a Python number) is checked at no cost.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ["FiniteGuard", "NonFiniteError"]


class NonFiniteError(ValueError):
    """A training loop met a NaN or inf input or loss; the message names where."""


class FiniteGuard:
    """Records whether the inputs / losses of each step are finite; :meth:`check` raises at the first bad one.

    Args:
        where: how a step is named, a format string filled with the ``step`` arguments of
            :meth:`record`, e.g. ``"task {}, batch {}"``.
        enabled: ``False`` makes every call a no-op (``--no-finite-check``).
        every: also check after this many records (bounds the memory held between checks); 0: never.
    """

    def __init__(self, where: str, enabled: bool = True, every: int = 1000):
        self.where = where
        self.enabled = enabled
        self.every = every
        self._pending: list[tuple[tuple, str, Union[bool, Tensor]]] = []

    def record(self, *step, **values: Union[Tensor, Sequence[Tensor], float]) -> None:
        """Note whether each of ``values`` (by name: a tensor, a list of tensors such as the
        weights, or a number) is all finite at ``step``.

        A list is checked through the sum of its tensors' sums: a sum overflows only for weights
        near 1e38, which have diverged anyway."""
        if not self.enabled:
            return
        for name, v in values.items():
            if isinstance(v, Tensor):
                flag: Union[bool, Tensor] = torch.isfinite(v.detach()).all() if v.is_floating_point() else True
            elif isinstance(v, (list, tuple)):  # weights: a sum is finite iff its terms are (20x faster)
                sums = [t.detach().sum() for t in v if t.is_floating_point()]
                flag = torch.isfinite(torch.stack(sums).sum()) if sums else True
            else:
                flag = math.isfinite(float(v))
            self._pending.append((step, name, flag))
        if self.every and len(self._pending) >= self.every:
            self.check()

    def check(self) -> None:
        """Read the flags recorded since the last check (one device sync); raise
        :class:`NonFiniteError` naming the first non-finite value and its step."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        tensors = [f for _, _, f in pending if isinstance(f, Tensor)]
        read = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else ())
        for step, name, flag in pending:
            ok = next(read) if isinstance(flag, Tensor) else flag
            if not ok:
                raise NonFiniteError(
                    f"non-finite {name} (NaN or inf) at {self.where.format(*step)}: the run is stopped; check the "
                    "data and the learning rates (--no-finite-check, or check_finite=False, trains on regardless)")
