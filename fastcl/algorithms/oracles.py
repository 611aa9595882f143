"""The two oracle baselines of HAL's Table 1: Clone-and-finetune and Multitask.

* Clone-and-finetune: a separate model per task; the model of task t starts as a copy of task
  t-1's final model and is fine-tuned on task t only. Predictions for task t use its own model,
  so nothing is ever forgotten (forgetting 0 by construction) — it needs the task id at test time.
* Multitask: the joint-training upper bound. ``observe`` only stores the batch; ``end_task(t)``
  trains a model from the initial weights for one shuffled pass over all the data of tasks 0..t
  (batch 10), so row t of the accuracy matrix is what joint training on the tasks seen so far
  reaches, and the last row is the Multitask oracle.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .base import LearnerConfig, ModelLearner, reject_inert
from .er import Finetune

__all__ = ["CloneAndFinetune", "Multitask", "OracleConfig"]


@dataclass
class OracleConfig(LearnerConfig):
    """Oracle hyperparameters (HAL grid: lr 0.1 on MNIST).

    Attributes:
        batch_size: Multitask's batch size over the pooled data (10, as the stream);
            Clone-and-finetune accepts only the default (it trains on the stream's batches).
    """

    batch_size: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class CloneAndFinetune(Finetune):
    """One model per task, each cloned from the previous task's final model (trained as Finetune)."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[OracleConfig] = None, task_classes=None):
        config = config or OracleConfig()
        reject_inert(config, ["batch_size"], "Clone-and-finetune trains on the stream's own batches "
                     "(batch_size is Multitask's)")
        super().__init__(model, num_classes, input_shape, config, task_classes)
        self.task_params: dict[int, dict[str, Tensor]] = {}

    def end_task(self, task: int) -> None:
        self._check_task(task)
        self.task_params[task] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def predict(self, x: Tensor, task: Optional[int] = None) -> Tensor:
        """Logits of the model kept for ``task`` (needed: one model per task)."""
        if task is None:
            raise ValueError("predict needs task: clone-and-finetune keeps one model per task")
        state = self.task_params.get(task)
        if state is None:  # a task not trained yet: the current model (a clone-to-be)
            return super().predict(x, task)
        was = self.model.training
        self.model.eval()
        try:
            return self.mask_logits(functional_call(self.model, state, (x,)), task)
        finally:
            self.model.train(was)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["task_params"] = {t: {k: v.clone() for k, v in s.items()} for t, s in self.task_params.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.task_params = {int(t): {k: v.clone() for k, v in s.items()} for t, s in state["task_params"].items()}


class Multitask(ModelLearner):
    """Joint training on all data of the tasks seen so far (one shuffled pass from the initial weights)."""

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int],
                 config: Optional[OracleConfig] = None, task_classes=None):
        super().__init__(model, num_classes, input_shape, config or OracleConfig(), task_classes)
        self.initial = copy.deepcopy(model.state_dict())
        self.xs: list[Tensor] = []
        self.ys: list[Tensor] = []
        self.ts: list[Tensor] = []

    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        self._check_batch(x, y, task)
        self._begin(task)
        self.xs.append(x.detach().clone())
        self.ys.append(y.clone())
        self.ts.append(torch.full_like(y, task))
        return float("nan")  # nothing is trained until the end of the task

    def end_task(self, task: int) -> None:
        self._check_task(task)
        if not self.xs:
            return
        x, y, t = torch.cat(self.xs), torch.cat(self.ys), torch.cat(self.ts)
        self.xs, self.ys, self.ts = [x], [y], [t]
        self.model.load_state_dict(self.initial)
        order = torch.randperm(x.shape[0], generator=self.generator, device=self.device)
        bs = self.config.batch_size
        for i in range(0, x.shape[0], bs):
            idx = order[i : i + bs]
            tasks = t[idx] if self.task_classes is not None else task
            self.sgd_step(self.loss(x[idx], y[idx], tasks))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({"initial": copy.deepcopy(self.initial), "xs": [v.clone() for v in self.xs],
                      "ys": [v.clone() for v in self.ys], "ts": [v.clone() for v in self.ts]})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.initial = copy.deepcopy(state["initial"])
        self.xs = [v.clone() for v in state["xs"]]
        self.ys = [v.clone() for v in state["ys"]]
        self.ts = [v.clone() for v in state["ts"]]
