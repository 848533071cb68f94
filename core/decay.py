"""Exponential decay in event time: the one rule every decayed count follows.

A weight ``w`` observed at time ``t`` is worth ``w * 2 ** -((now - t) / half_life)``
at ``now``. Stores keep forward-decayed sums against a landmark (``decay.lua``
holds the same rule for Redis scripts), so every update is a pure increment.

>>> factor(86_400_000, 86_400.0), factor(0, 60.0), round(factor(-60_000, 60.0), 3)
(0.5, 1.0, 2.0)
>>> round(rate_per_ms(60.0) * 60_000, 6)
0.693147
"""

from __future__ import annotations

import math

LN2 = math.log(2)


def rate_per_ms(half_life_s: float) -> float:
    """The decay constant ``lambda`` per millisecond of a half-life in seconds."""
    return LN2 / 1000 / half_life_s


def factor(age_ms: float, half_life_s: float) -> float:
    """What one unit of weight is worth ``age_ms`` later (more than 1 for a negative age)."""
    return math.exp(-age_ms * rate_per_ms(half_life_s))
