"""Finetune and experience replay with a ring memory (ER-Ring).

ER-Ring (Chaudhry et al., 2019, "On tiny episodic memories in continual learning"; the
baseline of HAL, Sec. 5): every step trains on the incoming batch (10 examples) together with
a batch of the same size sampled from the ring memory of *previous* tasks, then stores the
incoming batch in the memory, which keeps the last ``m`` examples per class per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from ..memory import RingBuffer
from .base import LearnerConfig, ModelLearner

__all__ = ["Finetune", "FinetuneConfig", "ERRing", "ERConfig"]


@dataclass
class FinetuneConfig(LearnerConfig):
    """Finetune: plain SGD on the stream, no memory (the lower bound)."""


class Finetune(ModelLearner):
    """Plain SGD on each incoming batch; forgets freely (HAL's "Finetune" baseline)."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[FinetuneConfig] = None, task_classes=None):
        super().__init__(model, num_classes, input_shape, config or FinetuneConfig(), task_classes)

    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        self._check_batch(x, y, task)
        self._begin(task)
        loss = self.loss(x, y, task)
        self.sgd_step(loss)
        return float(loss.detach())


@dataclass
class ERConfig(LearnerConfig):
    """ER-Ring hyperparameters (HAL Sec. 5 defaults for MNIST).

    Attributes:
        per_class: m, examples kept per class per task (1, 3 or 5 in the paper).
        replay_batch: examples sampled from memory per step (10, as the stream batch).
        num_tasks: tasks the memory preallocates (23); a later task grows it, so this is only a
            size hint.
        replay_replacement: how the replay batch is drawn from the memory of previous tasks.
            False (default, the HAL / A-GEM authors' code: ``np.random.choice(filled,
            eps_mem_batch, replace=False)``): ``replay_batch`` distinct stored examples, or every
            stored example while fewer are held. True: ``replay_batch`` draws with replacement
            (fastcl's default before 0.6; the fused ``ring_sample`` op).
    """

    per_class: int = 1
    replay_batch: int = 10
    num_tasks: int = 23
    replay_replacement: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.per_class < 1:
            raise ValueError(f"per_class (m) must be >= 1, got {self.per_class}")
        if self.replay_batch < 0:
            raise ValueError(f"replay_batch must be >= 0, got {self.replay_batch}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")


class ERRing(ModelLearner):
    """Experience replay with a per-(task, class) ring memory of previous tasks."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[ERConfig] = None, task_classes=None):
        config = config or ERConfig()
        super().__init__(model, num_classes, input_shape, config, task_classes)
        self.memory = RingBuffer(config.num_tasks, num_classes, config.per_class, self.input_shape,
                                 dtype=next(model.parameters()).dtype, device=self.device)

    def replay(self, task: int) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """A replay batch from the memory of tasks before ``task``, or None before any."""
        if task == 0 or self.config.replay_batch == 0 or not any(self.memory.inserted[:task]):
            return None
        return self.memory.sample(self.config.replay_batch, tasks=range(task), generator=self.generator,
                                  replacement=self.config.replay_replacement)

    def _start(self, x: Tensor, y: Tensor, task: int) -> None:
        """Check an incoming batch; begin its task."""
        self._check_batch(x, y, task)
        self._begin(task)

    def _joined_batch(self, x: Tensor, y: Tensor, task: int) -> tuple[Tensor, Tensor, Tensor | int]:
        """:meth:`_start`, then B u B_M: the incoming batch joined with a replay batch of previous
        tasks, as (x, y, tasks) with tasks the int task (single head) or per-example task ids."""
        self._start(x, y, task)
        mem = self.replay(task)
        if mem is None:
            return x, y, task
        mx, my, mt = mem
        tasks = torch.cat([torch.full_like(y, task), mt]) if self.task_classes is not None else task
        return torch.cat([x, mx]), torch.cat([y, my]), tasks

    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        loss = self.loss(*self._joined_batch(x, y, task))
        self.sgd_step(loss)
        self.memory.add(x.detach(), y, task)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
