"""Reptile (Nichol et al. 2018; CTS paper Algorithm 1) with T task learners stacked under vmap."""

from __future__ import annotations

from .cts import TaskLearners

__all__ = ["Reptile"]


class Reptile(TaskLearners):
    """Reptile (Algorithm 1): every repetition resets the T task learners to phi, runs K inner
    steps each (one ``vmap`` step of all of them at a time) and then makes ONE meta step
    ``phi += beta * mean_t(theta_K^t - phi)`` (``trajectory_shift_`` with ``shift=False``).

    Same arguments and :class:`~fastcl.algorithms.cts.CTSConfig` as CTS (``config.shift`` is
    ignored); with K = 1 it equals CTS.
    """

    kind = "reptile"

    def _after_inner_step(self) -> None:
        if self.k == self.config.inner_steps:
            self.meta_step(shift=False)
