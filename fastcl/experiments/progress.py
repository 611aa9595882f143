"""The overall progress bar of ``fastcl run`` and its paper-scale notices.

Every family of ``fastcl run`` shows one bar over all the work of the run (learners x seeds x
the family's work units: tasks, meta-iterations or inner steps), with tqdm's ETA, on stderr,
beside the bar of the (learner, seed) in progress; ``--no-progress`` turns both off. A resumed
run's bar starts at the work its checkpoints already hold.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

from tqdm.auto import tqdm

__all__ = ["overall_bar", "done_counter", "paper_scale_notice"]


def overall_bar(total: int, *, unit: str, progress: bool = True, desc: str = "overall") -> tqdm:
    """The bar over all the work of one ``fastcl run``.

    Args:
        total: work units of the whole run (e.g. learners x seeds x tasks).
        unit: what one unit is ("task", "it", "step").
        progress: ``False`` gives a disabled bar (its ``update`` / ``close`` still work).
        desc: the label on its left (a family sets "overall, LEARNER seed S" as it goes).
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be an int >= 0, got {total!r}")
    return tqdm(total=total, disable=not progress, unit=unit, desc=desc, position=0, dynamic_ncols=True,
                file=sys.stderr)


def done_counter(bar: tqdm) -> Callable[[str, int, int], None]:
    """``done(learner, seed, n)``: the run of (learner, seed) has ``n`` units done; moves ``bar`` by
    what is new since the last call for that run (a resumed run jumps over its done units)."""
    done: dict[tuple[str, int], int] = {}

    def update(name: str, seed: int, n: int) -> None:
        bar.update(n - done.get((name, seed), 0))
        done[name, seed] = n

    return update


def _minutes(m: float) -> str:
    """``m`` minutes rounded for a notice: "40 s", "3 min", "1.5 h"."""
    if m < 1:
        return f"{max(1, round(m * 60, -1 if m > 1 / 6 else 0)):.0f} s"
    if m < 90:
        return f"{m:.0f} min"
    return f"{m / 60:.1f} h".replace(".0 h", " h")


def paper_scale_notice(what: str, minutes_per_run: dict[str, float], learners: Iterable[str], seeds: int,
                       shorter: str) -> str:
    """The one-line notice a family prints before a run at the paper's scale (its default size).

    Args:
        what: the paper-scale size ("50,000 iterations").
        minutes_per_run: learner -> minutes of one seed of it on this 2-core machine (measured;
            see the family's docs page).
        learners: the learners of the run.
        seeds: seeds of the run.
        shorter: the option that gives a shorter run ("--iterations").
    """
    learners = list(learners)
    per = {n: minutes_per_run[n] for n in learners}
    each = (f"about {_minutes(per[learners[0]])}" if len(set(per.values())) == 1
            else "about " + ", ".join(f"{_minutes(m)} ({n})" for n, m in per.items()))
    total = seeds * sum(per.values())
    runs = len(learners) * seeds
    whole = f", {_minutes(total)} for these {runs} runs" if runs > 1 else ""
    return (f"paper scale: {what}, {each} per learner and seed on 2 cores{whole}; "
            f"{shorter} for a shorter run")
