"""Continual learners on one protocol (see :mod:`fastcl.algorithms.base`)."""

from .base import Learner, LearnerConfig, ModelLearner
from .emcl import EMCL, EMCL_VARIANTS, EMCLConfig
from .er import ERConfig, ERRing, Finetune, FinetuneConfig
from .hal import ANCHOR_KINDS, HAL, HALConfig
from .lamaml import LaMAML, LaMAMLConfig, ReplayMetaConfig, ReplayMetaLearner
from .oracles import CloneAndFinetune, Multitask, OracleConfig
from .regularized import AGEM, EWC, AGEMConfig, EWCConfig

__all__ = ["Learner", "LearnerConfig", "ModelLearner", "ERConfig", "ERRing", "Finetune", "FinetuneConfig",
           "HAL", "HALConfig", "ANCHOR_KINDS",
           "AGEM", "AGEMConfig", "EWC", "EWCConfig",
           "CloneAndFinetune", "Multitask", "OracleConfig",
           "LaMAML", "LaMAMLConfig", "ReplayMetaConfig", "ReplayMetaLearner", "EMCL", "EMCLConfig", "EMCL_VARIANTS"]
