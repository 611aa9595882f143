"""Continual learners on one protocol (see :mod:`fastcl.algorithms.base`)."""

from .base import Learner, LearnerConfig, ModelLearner
from .emcl import EMCL, EMCL_VARIANTS, EMCLConfig
from .er import ERConfig, ERRing, Finetune, FinetuneConfig
from .ftml import (FTML, ONLINE_LEARNERS, FollowTheLeader, FromScratch, FromScratchAdam, FTMLConfig, OnlineLearner,
                   TrainOnEverything, sgd_adapt)
from .hal import ANCHOR_KINDS, HAL, HALConfig
from .l2f import L2F, L2FConfig
from .maml import MAML, MAMLConfig
from .lamaml import LaMAML, LaMAMLConfig, ReplayMetaConfig, ReplayMetaLearner
from .cts import CTS, CTSAccurate, CTSConfig, TaskLearners
from .reptile import Reptile
from .oracles import CloneAndFinetune, Multitask, OracleConfig
from .overrides import parse_overrides
from .regularized import AGEM, EWC, AGEMConfig, EWCConfig

__all__ = ["Learner", "LearnerConfig", "ModelLearner", "ERConfig", "ERRing", "Finetune", "FinetuneConfig",
           "HAL", "HALConfig", "ANCHOR_KINDS",
           "AGEM", "AGEMConfig", "EWC", "EWCConfig",
           "CloneAndFinetune", "Multitask", "OracleConfig",
           "MAML", "MAMLConfig", "L2F", "L2FConfig",
           "CTS", "CTSAccurate", "CTSConfig", "TaskLearners", "Reptile",
           "LaMAML", "LaMAMLConfig", "ReplayMetaConfig", "ReplayMetaLearner", "EMCL", "EMCLConfig", "EMCL_VARIANTS",
           "FTML", "FTMLConfig", "OnlineLearner", "TrainOnEverything", "FollowTheLeader", "FromScratch",
           "FromScratchAdam",
           "sgd_adapt", "ONLINE_LEARNERS", "parse_overrides"]
