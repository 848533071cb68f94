"""Detection: a detector per (region, metric) and the alert book, observations in, alert changes out.

Both the region partitions (``relevo.drift.regional``) and the global stage
(``relevo.drift.combined``) run one. Its state (``DetectionState``) is plain picklable
data, snapshotted with the partition that owns it; the alert store and the sinks are
given to ``publish`` when the changes are sent. At most ``max_regions`` regions are
watched; a flood of region codes evicts the one observed longest ago.

>>> from relevo.drift.sinks import ListSink
>>> detection = Detection()
>>> detection.observe([("FR", "click_rank", 1.0 if i < 3000 else 0.05, 1_000 * i) for i in range(4000)])
>>> import asyncio; sink = ListSink(); asyncio.run(detection.publish(None, [sink]))
>>> [(a.region, a.metric, a.detector, 3000 < a.first_seen // 1000 < 3100) for a in sink.alerts]
[('FR', 'click_rank', 'ADWIN', True)]
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from relevo.drift.alerts import Alert, AlertBook, Change
from relevo.drift.detectors import Detector
from relevo.drift.metrics import METRICS, MetricSpec
from relevo.drift.sinks import AlertStore, Sink

log = logging.getLogger(__name__)

Observation = tuple[str, str, Any, int]  # region, metric, value, event time (ms)


@dataclasses.dataclass
class Tracker:
    """The detector of one (region, metric) and how many observations it has taken."""

    detector: Detector
    seen: int = 0


@dataclasses.dataclass
class DetectionState:
    """What a restart must keep: the alert book and every detector, by region (least recently observed first)."""

    book: AlertBook
    regions: OrderedDict[str, dict[str, Tracker]] = dataclasses.field(default_factory=OrderedDict)


class Detection:
    """Feeds observations to their (region, metric) detector and keeps the alert of each pair."""

    def __init__(self, metrics: Mapping[str, MetricSpec] = METRICS, cooldown_ms: int = 30 * 60_000,
                 max_regions: int = 5_000) -> None:
        self.metrics, self.max_regions = metrics, max_regions
        self.state = DetectionState(AlertBook(cooldown_ms=cooldown_ms))
        self._changed: dict[str, Alert] = {}  # alert id -> alert, to store after the batch
        self._announce: list[Alert] = []  # copies as they were when they changed state

    def observe(self, observations: Iterable[Observation]) -> None:
        regions, book = self.state.regions, self.state.book
        for region, metric, value, ts in observations:
            spec = self.metrics.get(metric)
            if spec is None:
                continue
            trackers = regions.get(region)
            if trackers is None:
                trackers = regions[region] = {}
                if len(regions) > self.max_regions:
                    stale, _ = regions.popitem(last=False)
                    book.forget(stale)
            regions.move_to_end(region)
            tracker = trackers.get(metric)
            if tracker is None:
                tracker = trackers[metric] = Tracker(spec.make())
            tracker.detector.update(value)
            tracker.seen += 1
            if tracker.seen >= spec.warmup:
                self._record(book.observe(region, metric, tracker.detector, ts))

    def _record(self, change: Change | None) -> None:
        if change is None:
            return
        alert = change.alert
        self._changed[alert.id] = alert
        if change.announce:
            log.info("drift %s: %s/%s %s (%s=%.3f, baseline %s, current %s)",
                     "recovered" if alert.resolved else "alert", alert.region, alert.metric,
                     alert.severity, alert.detector, alert.statistic, alert.baseline, alert.current)
            self._announce.append(dataclasses.replace(alert))

    async def publish(self, store: AlertStore | None, sinks: Sequence[Sink]) -> None:
        """Store every alert that changed and announce the new and resolved ones to the sinks."""
        changed, announce = list(self._changed.values()), self._announce
        self._changed, self._announce = {}, []
        if store is not None:
            await store.save(changed)
        for alert in announce:
            for sink in sinks:
                try:
                    await sink.send(alert)
                except Exception:  # one broken sink must not stop the stream or the others
                    log.exception("drift sink %s failed on alert %s", type(sink).__name__, alert.id)

    def active(self) -> list[Alert]:
        return self.state.book.active()
