"""What ``fastcl run`` runs: learners x seeds on a stream or a task family, with results, plots
and checkpoints. One module per family, and one registry of them that the CLI reads:

====================  ==================================================  =========================
module                learners                                            on
====================  ==================================================  =========================
:mod:`.continual`     er-ring, hal, emcl, lamaml, agem, ewc, ... (LEARNERS)  task streams (permuted-mnist, ...)
:mod:`.maml`          maml, fomaml, maml-l2f                              sinusoid families
:mod:`.cts`           reptile, cts, cts-accurate, ... cts-error           synthetic2d, images
:mod:`.ftml`          ftml, toe, ftl, scratch                             rainbow-mnist
====================  ==================================================  =========================

:data:`FAMILIES` lists the meta-learning families; each module exposes ``NAMES`` (the learners it
runs), ``add_run_arguments(group)`` (its own options), ``run_from_args(args, learners) -> int`` and,
optionally, ``RUN_MINIMUMS`` and ``check_run_args(args, learners)``. The continual learners are
:data:`LEARNERS` (name -> (builder, config class)), run by :func:`run_experiment`.
"""

from __future__ import annotations

from ..algorithms.overrides import parse_overrides
from . import cts, ftml, maml
from .continual import LEARNERS, average_accuracy_curve, build_learner, run_experiment

#: The meta-learning families of ``fastcl run`` (the continual learners are :data:`LEARNERS`).
FAMILIES = (maml, cts, ftml)

__all__ = ["LEARNERS", "FAMILIES", "build_learner", "run_experiment", "parse_overrides",
           "average_accuracy_curve", "continual", "maml", "cts", "ftml"]
