"""Which metrics the drift monitor watches, and with which detector and thresholds — in one place.

Each metric is watched per region and globally (region ``GLOBAL``). ``make()``
builds a fresh detector for one (region, metric); ``warmup`` is how many
observations that pair needs before it may raise an alert.

>>> sorted(METRICS)
['calibration', 'category', 'click_rank', 'ctr', 'purchase_rate', 'query_language', 'volume']
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

from drift.detectors import Detector, MixDetector, RiverDetector

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
          partial(RiverDetector, ADWIN, {"delta": 1e-5}, threshold=0.2, window=100), warmup=300),
    _spec("click_rank", "reciprocal rank 1/(position+1) of each clicked search result",
          partial(RiverDetector, ADWIN, {"delta": 1e-5}, threshold=0.25, window=100), warmup=300),
    _spec("purchase_rate", "1 for a purchase event, 0 for any other event",
          partial(RiverDetector, ADWIN, {"delta": 1e-5}, threshold=0.3, window=500, floor=0.01),
          warmup=2000),
    _spec("volume", "events per event-time minute",
          partial(RiverDetector, ADWIN, {"delta": 1e-5}, threshold=0.6, window=30, floor=1.0),
          warmup=120),
    _spec("query_language", "language of each non-empty query, guessed from script and locale",
          partial(MixDetector, threshold=0.25, reference=1000, window=500), warmup=1500),
    _spec("category", "category of each clicked or purchased item that names one",
          partial(MixDetector, threshold=0.25, reference=1000, window=500), warmup=1500),
    _spec("calibration", "outcome minus predicted click probability, fed by observe_prediction",
          partial(RiverDetector, ADWIN, {"delta": 1e-5}, threshold=1.0, window=300, floor=0.1),
          warmup=1000),
])
