"""Drift detectors behind one small interface.

Every detector takes one observation at a time with ``update(x)`` and then says
whether a change was accepted on that update (``drift_detected``), how large it
is (``statistic``), what the signal looked like before (``baseline``) and now
(``current``), and whether the signal is back to that baseline (``recovered``).
Detectors are plain picklable objects, so the monitor snapshots them as they are.

``RiverDetector`` wraps a river detector (ADWIN, PageHinkley, KSWIN, DDM, EDDM):
river decides *when* the stream changed, and a relative-effect gate decides
whether the change is large enough to matter, because on a long, real stream
tiny changes are statistically significant but nobody wants an alert for them.

>>> from river.drift import ADWIN
>>> d = RiverDetector(ADWIN, {"delta": 1e-3}, threshold=0.2, window=50)
>>> fired = []
>>> for i in range(2000):
...     d.update(1.0 if i % 2 == 0 or i >= 1000 else 0.0)  # a rate of 0.5, then 1.0
...     fired += [i] * d.drift_detected
>>> len(fired), 1000 < fired[0] < 1100, round(d.baseline, 1), d.statistic > 0.2, d.current
(1, True, 0.5, True, 1.0)

``MixDetector`` watches a categorical mix with the population stability index
between a reference window and a sliding current window:

>>> m = MixDetector(threshold=0.25, reference=200, window=200, check_every=20)
>>> for i in range(400):
...     m.update("en" if i % 4 else "es")
>>> m.drift_detected, m.statistic < 0.01
(False, True)
>>> for i in range(200):
...     m.update("ja")
...     if m.drift_detected:
...         break
>>> i < 100, m.current["ja"] >= 0.1
(True, True)
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

Level = float | dict[str, float]


class Detector(Protocol):
    """What the monitor needs from a detector; one instance per (region, metric)."""

    name: str
    threshold: float

    def update(self, x: Any) -> None:
        """Take one observation."""

    @property
    def drift_detected(self) -> bool:
        """A change was accepted on the latest update."""

    @property
    def statistic(self) -> float:
        """Size of the latest change: relative change of the mean, or PSI."""

    @property
    def baseline(self) -> Level:
        """The signal before the latest accepted change (its normal level)."""

    @property
    def current(self) -> Level:
        """The signal over the recent window."""

    @property
    def recovered(self) -> bool:
        """The signal is back near ``baseline`` after a change."""

    @property
    def window(self) -> int:
        """Observations in the recent window."""


def relative_change(value: float, reference: float, floor: float = 1e-3) -> float:
    """``(value - reference) / |reference|``, with a floor so a zero reference stays finite.

    >>> relative_change(0.75, 1.0), relative_change(1.0, 0.0, floor=0.1)
    (-0.25, 10.0)
    """
    return (value - reference) / max(abs(reference), floor)


def log_ratio(value: float, reference: float, floor: float = 1.0) -> float:
    """``log((value + floor) / (reference + floor))``: symmetric for collapses and spikes of counts.

    >>> round(log_ratio(0.0, 19.0, floor=1.0), 2), round(log_ratio(59.0, 19.0, floor=1.0), 2)
    (-3.0, 1.1)
    """
    return math.log((max(value, 0.0) + floor) / (max(reference, 0.0) + floor))


class _Reporting:
    """What every detector here reports alike: whether the latest update accepted a change, and its size."""

    _detected: bool = False
    _statistic: float = 0.0

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def statistic(self) -> float:
        return self._statistic


class RiverDetector(_Reporting):
    """A river drift detector, gated by a minimum relative change of the mean.

    ``make(**params)`` builds the river detector. ``threshold`` is the smallest
    relative change worth an alert. After river flags a change the gate stays
    open for ``window`` observations, comparing the mean of the last ``window``
    values with the mean before the change. ``as_error`` feeds binary detectors
    (DDM, EDDM) the complement of a success rate, since they watch error rates rise.
    ``log_scale`` measures the change as a log ratio (for counts) instead of relative.
    """

    def __init__(self, make: Callable[..., Any], params: Mapping[str, Any] | None = None, *,
                 threshold: float = 0.2, window: int = 100, memory: int = 5000,
                 floor: float = 1e-3, as_error: bool = False, log_scale: bool = False) -> None:
        self.name = make.__name__
        self.threshold = threshold
        self._river = make(**dict(params or {}))
        self._as_error = as_error
        self._floor = floor
        self._change = log_ratio if log_scale else relative_change
        self._memory = memory
        self._recent: deque[float] = deque(maxlen=window)
        self._recent_sum = 0.0
        self._mean = 0.0  # long-memory mean of the regime: the baseline while nothing fires
        self._n = 0
        self._armed = 0  # observations left in which a flagged change may still pass the gate
        self._frozen = 0.0  # regime mean when river flagged the change
        self._normal: float | None = None  # baseline of the last accepted change, until recovery
        self._detected = False
        self._statistic = 0.0

    def update(self, x: float) -> None:
        x = float(x)
        self._detected = False
        if len(self._recent) == self._recent.maxlen:
            self._recent_sum -= self._recent[0]
        self._recent.append(x)
        self._recent_sum += x
        self._river.update(x < 0.5 if self._as_error else x)
        if self._river.drift_detected and not self._armed:
            self._armed, self._frozen = len(self._recent), self._mean
        self._n += 1
        self._mean += (x - self._mean) / min(self._n, self._memory)
        if self._armed:
            self._armed -= 1
            change = self._change(self.current, self._frozen, self._floor)
            if abs(change) >= self.threshold:
                self._accept(change)
        if self._normal is not None and self.recovered:
            self._normal = None

    def _accept(self, change: float) -> None:
        self._detected, self._statistic, self._armed = True, change, 0
        if self._normal is None:
            self._normal = self._frozen
        # The new level becomes the regime, so the next change is measured from it.
        self._mean, self._n = self.current, len(self._recent)

    @property
    def baseline(self) -> float:
        return self._mean if self._normal is None else self._normal

    @property
    def current(self) -> float:
        return self._recent_sum / len(self._recent) if self._recent else 0.0

    @property
    def recovered(self) -> bool:
        if self._normal is None:
            return True
        change = self._change(self.current, self._normal, self._floor)
        return len(self._recent) == self._recent.maxlen and abs(change) < self.threshold / 2

    @property
    def window(self) -> int:
        return len(self._recent)


def psi(reference: Mapping[Hashable, int], current: Mapping[Hashable, int], smoothing: float = 0.5) -> float:
    """Population stability index between two count tables (additive smoothing for empty cells).

    >>> psi({"a": 50, "b": 50}, {"a": 50, "b": 50})
    0.0
    >>> round(psi({"a": 90, "b": 10}, {"a": 50, "b": 50}), 3)
    0.853
    """
    keys = set(reference) | set(current)
    ref_total = sum(reference.values()) + smoothing * len(keys)
    cur_total = sum(current.values()) + smoothing * len(keys)
    total = 0.0
    for key in keys:
        p = (reference.get(key, 0) + smoothing) / ref_total
        q = (current.get(key, 0) + smoothing) / cur_total
        total += (q - p) * math.log(q / p)
    return total


def _shares(counts: Counter[str], top: int = 5) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {str(k): round(v / total, 4) for k, v in counts.most_common(top)}


class MixDetector(_Reporting):
    """PSI between a fixed reference window and a sliding current window of categories.

    The reference is the first ``reference`` observations; it is kept through an
    alert, so the alert recovers when the mix returns to it (PSI below half the
    threshold). PSI is computed every ``check_every`` updates to keep it cheap.
    """

    name = "PSI"

    def __init__(self, threshold: float = 0.25, reference: int = 1000, window: int = 500,
                 check_every: int = 50) -> None:
        self.threshold = threshold
        self._reference_size = reference
        self._check_every = check_every
        self._reference: Counter[str] = Counter()
        self._recent: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()
        self._since_check = 0
        self._statistic = 0.0
        self._detected = False
        self._alerting = False

    def update(self, x: str) -> None:
        self._detected = False
        if sum(self._reference.values()) < self._reference_size:
            self._reference[x] += 1
            return
        if len(self._recent) == self._recent.maxlen:
            oldest = self._recent[0]
            self._counts[oldest] -= 1
            if not self._counts[oldest]:
                del self._counts[oldest]
        self._recent.append(x)
        self._counts[x] += 1
        self._since_check += 1
        if self._since_check < self._check_every or len(self._recent) < self._recent.maxlen:
            return
        self._since_check = 0
        self._statistic = psi(self._reference, self._counts)
        if self._statistic >= self.threshold:
            self._detected = self._alerting = True
        elif self._statistic < self.threshold / 2:
            self._alerting = False

    @property
    def baseline(self) -> dict[str, float]:
        return _shares(self._reference)

    @property
    def current(self) -> dict[str, float]:
        return _shares(self._counts)

    @property
    def recovered(self) -> bool:
        return not self._alerting

    @property
    def window(self) -> int:
        return len(self._recent)


class EnvelopeDetector(_Reporting):
    """Counts per bucket against the range of the last day's hours: for signals with a daily cycle.

    The mean of the last ``window`` buckets is compared with the lowest and the highest
    mean of the previous ``blocks`` whole windows (the last day's hours): a morning
    ramp-up stays inside what yesterday did, a region that goes silent in its busiest
    hour, or triples, does not. The change is a log ratio to the bound crossed, with
    ``floor`` events of slack.

    >>> d = EnvelopeDetector(window=2, blocks=3, threshold=1.0, floor=1.0)
    >>> for x in [1, 1, 9, 9, 1, 1, 9, 9]:  # a cycle: never outside its own range
    ...     d.update(x)
    ...     assert not d.drift_detected
    >>> for x in [40, 40]:
    ...     d.update(x)
    >>> d.drift_detected, d.baseline, d.current
    (True, 9.0, 40.0)
    """

    name = "envelope"

    def __init__(self, *, window: int = 60, blocks: int = 24, threshold: float = 1.1, floor: float = 3.0) -> None:
        self.threshold, self._floor = threshold, floor
        self._recent: deque[float] = deque(maxlen=window)
        self._block_sum, self._block_n = 0.0, 0
        self._blocks: deque[float] = deque(maxlen=blocks)  # means of the last whole windows
        self._detected, self._statistic = False, 0.0
        self._normal: float | None = None  # the bound crossed, while alerting

    def update(self, x: float) -> None:
        x = float(x)
        self._detected = False
        self._recent.append(x)
        if len(self._blocks) == self._blocks.maxlen:
            self._check()
        self._block_sum += x
        self._block_n += 1
        if self._block_n == self._recent.maxlen:
            self._blocks.append(self._block_sum / self._block_n)
            self._block_sum, self._block_n = 0.0, 0

    def _check(self) -> None:
        if len(self._recent) < (self._recent.maxlen or 0):
            return
        low, high, current = min(self._blocks), max(self._blocks), self.current
        bound = high if current > high else low if current < low else current
        change = log_ratio(current, bound, self._floor)
        if self._normal is None and abs(change) >= self.threshold:
            self._detected, self._statistic, self._normal = True, change, bound
        elif self._normal is not None and abs(change) < self.threshold / 2:
            self._normal = None

    @property
    def baseline(self) -> float:
        return self._normal if self._normal is not None else (max(self._blocks) if self._blocks else 0.0)

    @property
    def current(self) -> float:
        return sum(self._recent) / len(self._recent) if self._recent else 0.0

    @property
    def recovered(self) -> bool:
        return self._normal is None

    @property
    def window(self) -> int:
        return len(self._recent)
