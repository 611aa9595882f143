"""Continual learners on one protocol (see :mod:`fastcl.algorithms.base`)."""

from .base import Learner, LearnerConfig, ModelLearner
from .er import ERConfig, ERRing, Finetune, FinetuneConfig
from .hal import ANCHOR_KINDS, HAL, HALConfig
from .l2f import L2F, L2FConfig
from .maml import MAML, MAMLConfig
from .oracles import CloneAndFinetune, Multitask, OracleConfig
from .regularized import AGEM, EWC, AGEMConfig, EWCConfig

__all__ = ["Learner", "LearnerConfig", "ModelLearner", "ERConfig", "ERRing", "Finetune", "FinetuneConfig",
           "HAL", "HALConfig", "ANCHOR_KINDS",
           "AGEM", "AGEMConfig", "EWC", "EWCConfig",
           "CloneAndFinetune", "Multitask", "OracleConfig",
           "MAML", "MAMLConfig", "L2F", "L2FConfig"]
from .cts import CTS, CTSAccurate, CTSConfig, TaskLearners
from .reptile import Reptile

__all__ += ["CTS", "CTSAccurate", "CTSConfig", "TaskLearners", "Reptile"]
