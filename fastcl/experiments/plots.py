"""Small helpers shared by the plots of ``fastcl run`` (matplotlib, Agg backend)."""

from __future__ import annotations

__all__ = ["task_ticks"]


def task_ticks(axis, zero_based: bool = False) -> None:
    """Integer task ticks counted from 1 on a matplotlib ``axis`` (``ax.xaxis`` / ``ax.yaxis``).

    Args:
        axis: the axis whose ticks name tasks.
        zero_based: the data coordinates are task indices 0..T-1 (an image of the accuracy
            matrix): the labels show them plus one.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    shift = 1 if zero_based else 0
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{int(round(v)) + shift}"))
