"""Which metrics the drift monitor watches, and with which detector and thresholds — in one place.

Each metric is watched per region and globally (region ``GLOBAL``). ``make()``
builds a fresh detector for one (region, metric); ``warmup`` is how many
observations that pair needs before it may raise an alert.

>>> sorted(METRICS)
['category', 'click_rank', 'ctr', 'purchase_rate', 'query_language', 'volume']
>>> METRICS["ctr"].make().name
'ADWIN'
>>> METRICS["query_language"].make().name
'PSI'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from river.drift import ADWIN

from relevo.drift.detectors import Detector, EnvelopeDetector, MixDetector, RiverDetector

GLOBAL = "*"  # not a valid region code in the event contract, so it cannot collide with one


@dataclass(frozen=True)
class MetricSpec:
    """A watched metric: what its observations mean and how drift in it is detected."""

    name: str
    meaning: str
    make: Callable[[], Detector]
    warmup: int


def _spec(name: str, meaning: str, make: Callable[[], Detector], warmup: int) -> tuple[str, MetricSpec]:
    return name, MetricSpec(name, meaning, make, warmup)


METRICS: Mapping[str, MetricSpec] = dict([
    _spec("ctr", "1 if a search with results got a click within the timeout, else 0",
          partial(RiverDetector, ADWIN, {"delta": 1e-3}, threshold=0.2, window=150), warmup=300),
    _spec("click_rank", "reciprocal rank 1/(position+1) of each clicked search result",
          partial(RiverDetector, ADWIN, {"delta": 1e-3}, threshold=0.25, window=150), warmup=300),
    _spec("purchase_rate", "share of purchases among the events of each non-empty minute",
          partial(RiverDetector, ADWIN, {"delta": 1e-5}, threshold=0.3, window=500, floor=0.01),
          warmup=2000),
    # Volume has a daily cycle: the last hour against the range of the last day's hours (a change
    # of about 3x beyond it, 3 events/min of slack, so a quiet region's night is not a collapse).
    _spec("volume", "events per event-time minute",
          partial(EnvelopeDetector, window=60, blocks=24, threshold=1.1, floor=3.0), warmup=1440),
    # Mixes drift with the time of day (regions wake up in turn), so PSI needs to be large.
    _spec("query_language", "language of each non-empty query (relevo.core.language, the locale as a prior)",
          partial(MixDetector, threshold=0.4, reference=3000, window=1000), warmup=4000),
    _spec("category", "category of each clicked or purchased item that names one",
          partial(MixDetector, threshold=0.4, reference=3000, window=1000), warmup=4000),
])
