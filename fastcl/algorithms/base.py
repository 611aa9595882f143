"""The continual-learner protocol every fastcl learner follows.

A learner sees a stream of tasks one batch at a time:

* ``begin_task(task)`` before a task's first batch (optional: ``observe`` starts a task by itself),
* ``observe(x, y, task)`` for each incoming batch (``task`` never decreases),
* ``end_task(task)`` once the task's data is over,
* ``predict(x)`` for logits at any time; ``predict(x, task)`` selects the head of a multi-head
  learner (one with ``task_classes``), which needs it,
* ``state_dict()`` / ``load_state_dict()`` for the full state (model, memory,
  generators), so a run interrupted after any task resumes exactly.

Hyperparameters are dataclasses with the paper's defaults; the paper's symbol is named in the
field's docstring.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops

__all__ = ["Learner", "ModelLearner", "LearnerConfig", "resolve_seed", "reject_inert"]


def reject_inert(cfg: Any, names: Sequence[str], reason: str) -> None:
    """Refuse settings that do nothing: each of ``names`` whose value in the config dataclass
    ``cfg`` differs from the field's default is a ValueError naming the field and ``reason`` (why
    the learner never reads it), instead of being silently ignored."""
    defaults = {f.name: f.default for f in fields(cfg)}
    for name in names:
        value = getattr(cfg, name)
        if value != defaults[name]:
            raise ValueError(f"{name} does nothing in {type(cfg).__name__}: {reason}; got {name}={value!r} "
                             f"(leave it at its default {defaults[name]!r})")


@dataclass
class LearnerConfig:
    """Settings every learner shares.

    Attributes:
        lr: SGD learning rate of the model update.
        seed: seed of the learner's own generator (replay sampling and the like). ``None``
            (default): drawn from torch's global generator when the learner is built, so
            ``torch.manual_seed(s)`` before building a learner fixes its replay too, and runs with
            different torch seeds replay differently (``fastcl run`` passes its ``--seeds``).
    """

    lr: float = 0.1
    seed: Optional[int] = None

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, float) and value != value:
                raise ValueError(f"{name} must not be nan")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")


def resolve_seed(seed: Optional[int]) -> int:
    """``seed``, or for ``None`` a seed drawn from torch's global generator (one ``randint``)."""
    if seed is None:
        return int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return int(seed)


class Learner(abc.ABC):
    """The continual-learner protocol (see the module docstring)."""

    @abc.abstractmethod
    def observe(self, x: Tensor, y: Tensor, task: int) -> float:
        """Learn from one incoming batch ``x`` ``[B, *input_shape]``, ``y`` ``[B]`` of ``task``;
        returns the training loss."""

    def begin_task(self, task: int) -> None:
        """Called once before the first batch of ``task`` (optional: ``observe`` begins it too)."""

    def end_task(self, task: int) -> None:
        """Called once after the last batch of ``task``."""

    @abc.abstractmethod
    def predict(self, x: Tensor, task: Optional[int] = None) -> Tensor:
        """Logits ``[B, num_classes]`` for ``x`` (other tasks' classes masked in multi-head mode,
        where ``task`` is needed)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The full state: model, optimizer, memory, generators, progress."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class ModelLearner(Learner):
    """A learner that trains one ``nn.Module`` with SGD; the base of most fastcl learners.

    Args:
        model: maps ``[B, *input_shape]`` to ``[B, num_classes]`` logits.
        num_classes: size of the label space over all tasks.
        input_shape: shape of one example.
        config: the learner's hyperparameters.
        task_classes: for multi-head streams, the labels of each task; the logits of other
            labels are masked to -inf in the loss and in ``predict``. ``None``: single head.
    """

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int], config: LearnerConfig,
                 task_classes: Optional[Sequence[Sequence[int]]] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.model = model
        self.num_classes = num_classes
        self.input_shape = tuple(int(s) for s in input_shape)
        self.config = config
        self.device = next(model.parameters()).device
        self.task_classes = None if task_classes is None else [list(map(int, c)) for c in task_classes]
        # multi-head: row t marks the labels of task t (built once, indexed on every step)
        self.mask_table: Optional[Tensor] = None
        if self.task_classes is not None:
            self.mask_table = torch.zeros(len(self.task_classes), num_classes, dtype=torch.bool, device=self.device)
            for t, classes in enumerate(self.task_classes):
                self.mask_table[t, classes] = True
        self.current_task = -1
        #: the seed in use: ``config.seed``, or one drawn from torch's generator (config.seed None)
        self.seed = resolve_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]

    def sgd_step(self, loss: Tensor, lr: Optional[float] = None) -> None:
        """One plain SGD step on ``loss`` with the fused list update (``prox_sgd_`` with prox 0)."""
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        pairs = [(p, g) for p, g in zip(self.params, grads) if g is not None]
        with torch.no_grad():
            ops.prox_sgd_([p for p, _ in pairs], [g for _, g in pairs], None, None,
                          self.config.lr if lr is None else lr, 0.0)

    # -- checks -----------------------------------------------------------------------
    def _check_batch(self, x: Tensor, y: Tensor, task: int) -> None:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError("x and y must be tensors")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected [B, {', '.join(map(str, self.input_shape))}]")
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"y must be int64 of shape [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"y must hold labels in [0, {self.num_classes}), got [{int(y.min())}, {int(y.max())}]")
        self._check_task(task)
        if self.task_classes is not None and y.numel():
            if not bool(self.mask_table[task][y].all()):
                raise ValueError(f"y holds labels outside task {task}'s classes {self.task_classes[task]}")

    def _check_task(self, task: int) -> None:
        if isinstance(task, bool) or not isinstance(task, int) or task < 0:
            raise ValueError(f"task must be an int >= 0, got {task!r}")
        if task < self.current_task:
            raise ValueError(f"task {task} comes after task {self.current_task}: tasks must arrive in order")
        if self.task_classes is not None and task >= len(self.task_classes):
            raise ValueError(f"task {task} has no classes: task_classes covers {len(self.task_classes)} tasks")

    def _begin(self, task: int) -> None:
        self.current_task = task

    def begin_task(self, task: int) -> None:
        """Start ``task`` before its first batch (``observe`` does it by itself; tasks arrive in order)."""
        self._check_task(task)
        self._begin(task)

    # -- heads ------------------------------------------------------------------------
    def mask_logits(self, out: Tensor, tasks: Tensor | int, fill: float = float("-inf")) -> Tensor:
        """``out`` with the logits of other tasks' classes set to ``fill`` (multi-head; single
        head: ``out`` itself); ``tasks``: an int or ``[B]``."""
        if self.mask_table is None:
            return out
        return out.masked_fill(~self.mask_table[tasks], fill)

    def logits(self, x: Tensor, tasks: Tensor | int) -> Tensor:
        """Model logits with other tasks' classes masked (multi-head); ``tasks``: an int or ``[B]``."""
        return self.mask_logits(self.model(x), tasks)

    def loss(self, x: Tensor, y: Tensor, tasks: Tensor | int) -> Tensor:
        return F.cross_entropy(self.logits(x, tasks), y)

    @torch.no_grad()
    def predict(self, x: Tensor, task: Optional[int] = None) -> Tensor:
        """Logits ``[B, num_classes]`` of the model in eval mode; a multi-head learner needs
        ``task`` (the other tasks' classes are masked), a single-head one ignores it."""
        if task is None and self.mask_table is not None:
            raise ValueError("predict needs task for a multi-head learner (one built with task_classes)")
        was = self.model.training
        self.model.eval()
        try:
            return self.logits(x, task)
        finally:
            self.model.train(was)

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "generator": self.generator.get_state(),
            "current_task": self.current_task,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"])
        self.current_task = int(state["current_task"])
