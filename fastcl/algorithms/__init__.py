"""Continual learners on one protocol (see :mod:`fastcl.algorithms.base`)."""

from .base import Learner, LearnerConfig, ModelLearner
from .er import ERConfig, ERRing, Finetune, FinetuneConfig
from .ftml import (FTML, ONLINE_LEARNERS, FollowTheLeader, FromScratch, FTMLConfig, OnlineLearner,
                   TrainOnEverything, sgd_adapt)
from .hal import ANCHOR_KINDS, HAL, HALConfig
from .oracles import CloneAndFinetune, Multitask, OracleConfig
from .regularized import AGEM, EWC, AGEMConfig, EWCConfig

__all__ = ["Learner", "LearnerConfig", "ModelLearner", "ERConfig", "ERRing", "Finetune", "FinetuneConfig",
           "HAL", "HALConfig", "ANCHOR_KINDS",
           "AGEM", "AGEMConfig", "EWC", "EWCConfig",
           "CloneAndFinetune", "Multitask", "OracleConfig",
           "FTML", "FTMLConfig", "OnlineLearner", "TrainOnEverything", "FollowTheLeader", "FromScratch",
           "sgd_adapt", "ONLINE_LEARNERS"]
