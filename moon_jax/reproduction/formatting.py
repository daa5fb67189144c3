"""How the report writes a statistic: ``mean ± std`` in percent (or another scale), to fixed
decimals or to significant digits."""
from __future__ import annotations

import math
from typing import Mapping

from moon_jax.reproduction.stats import Stat


def pm(stat: Stat, scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``stat`` times ``scale`` to ``digits`` decimals; the mean alone for one
    seed, and never ``-0.00``."""
    mean, std, n = stat
    mean = round(scale * mean, digits) + 0.0  # + 0.0: no "-0.00"
    return f"{mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if n > 1 else "")


def pm_significant(stat: Stat, scale: float = 100.0, digits: int = 2) -> str:
    """Like :func:`pm` with ``digits`` significant digits of the mean (the std to the same
    decimal place), for quantities that span orders of magnitude (p(unknown): 40% or 0.0015%)."""
    mean = stat[0]
    decimals = 0 if mean == 0 else max(0, digits - 1 - math.floor(math.log10(abs(scale * mean))))
    return pm(stat, scale, decimals)


def cell(stats: Mapping[str, Stat], key: str, scale: float = 100.0, digits: int = 2) -> str:
    """A table cell: :func:`pm` of ``stats[key]``, or ``n/a`` when the runs did not record it."""
    return pm(stats[key], scale, digits) if key in stats else "n/a"
