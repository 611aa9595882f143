"""Warnings fastcl issues (exported from :mod:`fastcl`)."""

from __future__ import annotations

__all__ = ["SlowPathWarning"]


class SlowPathWarning(UserWarning):
    """A learner runs a slower path than its fused one, because of the model it was given.

    Issued once per learner, when it is built, with the reason (for example the module type that
    cannot be differentiated by hand). The results are the same; only the speed differs. Silence
    it with ``warnings.simplefilter("ignore", fastcl.SlowPathWarning)``.
    """
