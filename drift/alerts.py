"""Alerts and their life cycle: open, refresh (dedupe), resolve (recovery), cooldown.

``AlertBook.observe`` is called after each detector update of a (region, metric)
and returns a ``Change`` when the alert of that pair changed:

- a detector fires with no alert open → a new alert, announced to the sinks;
- it fires again while one is open → the same alert is refreshed (``last_seen``,
  statistic, current level) but not announced again: that is the dedupe;
- the signal is back near its baseline → the alert is resolved and announced;
- it fires within ``cooldown_ms`` (event time) of a resolution → the last alert
  is reopened quietly (and later resolved quietly), so a flapping signal does
  not flood the sinks.

>>> from relevo.drift.detectors import MixDetector
>>> book = AlertBook(cooldown_ms=1000)
>>> d = MixDetector(threshold=0.2, reference=100, window=100, check_every=10)
>>> changes = []
>>> for ts, x in enumerate(["a"] * 200 + ["b"] * 100 + ["a"] * 200 + ["b"] * 100):
...     d.update(x)
...     change = book.observe("FR", "category", d, ts)
...     changes += [(change.alert.first_seen, change.alert.resolved, change.announce)] if change else []
>>> [c for c in changes if c[2]]  # what the sinks hear: one alert, one recovery
[(209, False, True), (209, True, True)]
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from relevo.drift.detectors import Detector, Level


def _rounded(level: Level) -> Level:
    return round(level, 4) if isinstance(level, float) else level


@dataclass
class Alert:
    """What changed, where, since when, how strongly, and which detector saw it."""

    id: str
    region: str
    metric: str
    detector: str
    statistic: float
    baseline: Level
    current: Level
    window: int  # observations behind ``current``
    severity: str  # "warning", or "critical" when the change is twice the threshold
    first_seen: int  # event time, epoch ms
    last_seen: int
    resolved: bool = False
    resolved_at: int | None = None

    @classmethod
    def open(cls, region: str, metric: str, detector: Detector, ts: int) -> Alert:
        digest = hashlib.sha1(f"{region}|{metric}|{ts}".encode()).hexdigest()[:16]
        alert = cls(id=digest, region=region, metric=metric, detector=detector.name, statistic=0.0,
                    baseline=_rounded(detector.baseline), current=0.0, window=0, severity="warning",
                    first_seen=ts, last_seen=ts)
        alert.refresh(detector, ts)
        return alert

    def refresh(self, detector: Detector, ts: int) -> None:
        """Take the detector's latest reading (the baseline stays the one from before the change)."""
        self.statistic = round(detector.statistic, 4)
        self.current = _rounded(detector.current)
        self.window = detector.window
        self.last_seen = max(self.last_seen, ts)
        if self.severity != "critical":  # severity only escalates while the alert is open
            self.severity = "critical" if abs(detector.statistic) >= 2 * detector.threshold else "warning"
        self.resolved, self.resolved_at = False, None

    def resolve(self, detector: Detector, ts: int) -> None:
        self.current = _rounded(detector.current)
        self.last_seen = max(self.last_seen, ts)
        self.resolved, self.resolved_at = True, ts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(**data)


@dataclass(frozen=True)
class Change:
    """An alert that changed; ``announce`` says whether the sinks should hear about it."""

    alert: Alert
    announce: bool


@dataclass
class AlertBook:
    """The open and most recent alert of each (region, metric); picklable for snapshots."""

    cooldown_ms: int = 30 * 60_000
    latest: dict[tuple[str, str], Alert] = field(default_factory=dict)
    quiet: set[tuple[str, str]] = field(default_factory=set)  # reopened within the cooldown

    def observe(self, region: str, metric: str, detector: Detector, ts: int) -> Change | None:
        """Update the alert of (region, metric) after ``detector`` took an observation at ``ts``."""
        alert = self.latest.get((region, metric))
        if alert is not None and not alert.resolved:
            if detector.recovered:
                alert.resolve(detector, ts)
                announce = (region, metric) not in self.quiet
                self.quiet.discard((region, metric))
                return Change(alert, announce)
            if detector.drift_detected:
                alert.refresh(detector, ts)
                return Change(alert, announce=False)
            return None
        if not detector.drift_detected:
            return None
        if alert is not None and alert.resolved_at is not None and ts - alert.resolved_at < self.cooldown_ms:
            alert.refresh(detector, ts)
            self.quiet.add((region, metric))
            return Change(alert, announce=False)
        alert = self.latest[region, metric] = Alert.open(region, metric, detector, ts)
        return Change(alert, announce=True)

    def active(self) -> list[Alert]:
        return [a for a in self.latest.values() if not a.resolved]

    def forget(self, region: str) -> None:
        """Drop what is kept about ``region`` (its detectors were evicted)."""
        for key in [k for k in self.latest if k[0] == region]:
            del self.latest[key]
            self.quiet.discard(key)
