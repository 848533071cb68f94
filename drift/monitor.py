"""The drift monitor: a BatchProcessor that watches every metric per region and raises alerts.

Each batch becomes observations (``relevo.drift.signals``), each observation updates the
detector of its (region, metric) (``relevo.drift.metrics``), and the alert book turns
detector readings into alerts (``relevo.drift.alerts``), which go to the store and the
sinks (``relevo.drift.sinks``). The whole state is snapshotted to Redis every
``snapshot_every_batches`` batches or ``snapshot_every_s`` seconds and on close,
and restored before the first batch, so a restart keeps its history and its open
alerts, and does not announce them again.

>>> import asyncio
>>> monitor = DriftMonitor()  # no Redis: nothing stored, nothing restored
>>> base = {"type": "click", "region": "FR", "locale": "fr-FR", "user_id": "u", "session_id": "s",
...         "item_id": "i", "kind": "click"}
>>> stream = [{**base, "event_id": str(i), "ts": 1_000 * i, "position": 0 if i < 3000 else 20}
...           for i in range(4000)]
>>> asyncio.run(monitor.process(stream))
>>> [(a.region, a.metric, a.detector, a.baseline > 0.98, a.statistic < -0.25) for a in monitor.active_alerts()]
[('FR', 'click_rank', 'ADWIN', True, True), ('*', 'click_rank', 'ADWIN', True, True)]
>>> [3000 < a.first_seen // 1000 < 3100 for a in monitor.active_alerts()]  # the change came at 3000 s
[True, True]
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from relevo.core.keys import Keys
from relevo.drift.alerts import Alert, AlertBook, Change
from relevo.drift.detectors import Detector
from relevo.drift.metrics import METRICS, MetricSpec
from relevo.drift.signals import Observation, Signals
from relevo.drift.sinks import AlertStore, Sink
from relevo.drift.state import Snapshots
from relevo.streams.events import Event

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Tracker:
    """The detector of one (region, metric) and how many observations it has taken."""

    detector: Detector
    seen: int = 0


@dataclasses.dataclass
class MonitorState:
    """Everything a restart must keep; pickled as one object."""

    signals: Signals
    book: AlertBook
    trackers: dict[tuple[str, str], Tracker]


class DriftMonitor:
    """Online drift detection per region and metric, with alerts to a store and sinks.

    ``redis`` (a ``redis.asyncio`` client) holds the alert store and the state
    snapshots; without it the monitor runs in memory only (benchmarks, doctests).
    ``metrics`` chooses which metrics to watch and how (default: all of ``METRICS``).
    """

    name = "drift"

    def __init__(self, redis: aioredis.Redis | None = None, sinks: Sequence[Sink] = (), *,
                 metrics: Mapping[str, MetricSpec] = METRICS, keys: Keys | None = None,
                 cooldown_ms: int = 30 * 60_000, ctr_timeout_ms: int = 10 * 60_000,
                 bucket_ms: int = 60_000, snapshot_every_batches: int = 100,
                 snapshot_every_s: float = 30.0) -> None:
        keys = keys or Keys()
        self.metrics = metrics
        self.sinks = list(sinks)
        self.store = AlertStore(redis, keys) if redis is not None else None
        self._snapshots = Snapshots(redis, keys) if redis is not None else None
        self._restored = redis is None
        self.state = MonitorState(Signals(ctr_timeout_ms=ctr_timeout_ms, bucket_ms=bucket_ms),
                                  AlertBook(cooldown_ms=cooldown_ms), {})
        self.snapshot_every_batches = snapshot_every_batches
        self.snapshot_every_s = snapshot_every_s
        self._batches_since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._changed: dict[str, Alert] = {}  # alert id -> alert, to store after the batch
        self._announce: list[Alert] = []  # copies as they were when they changed state

    async def process(self, events: Sequence[Event]) -> None:
        await self.restore()
        self._apply(self.state.signals.observe(events))
        await self._flush()
        self._batches_since_snapshot += 1
        if (self._batches_since_snapshot >= self.snapshot_every_batches
                or time.monotonic() - self._last_snapshot >= self.snapshot_every_s):
            await self.snapshot()

    def active_alerts(self) -> list[Alert]:
        return self.state.book.active()

    def _apply(self, observations: list[Observation]) -> None:
        trackers, book = self.state.trackers, self.state.book
        for region, metric, value, ts in observations:
            spec = self.metrics.get(metric)
            if spec is None:
                continue
            tracker = trackers.get((region, metric))
            if tracker is None:
                tracker = trackers[region, metric] = Tracker(spec.make())
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

    async def _flush(self) -> None:
        changed, announce = list(self._changed.values()), self._announce
        self._changed, self._announce = {}, []
        if self.store is not None:
            await self.store.save(changed)
        for alert in announce:
            for sink in self.sinks:
                try:
                    await sink.send(alert)
                except Exception:  # one broken sink must not stop the stream or the others
                    log.exception("drift sink %s failed on alert %s", type(sink).__name__, alert.id)

    async def restore(self) -> None:
        """Load the last snapshot, once, before the first batch."""
        if self._restored or self._snapshots is None:
            return
        self._restored = True
        state = await self._snapshots.load()
        if isinstance(state, MonitorState):
            self.state = state
            log.info("drift state restored: %d detectors, %d open alerts", len(state.trackers),
                     len(state.book.active()))

    async def snapshot(self) -> None:
        self._batches_since_snapshot, self._last_snapshot = 0, time.monotonic()
        if self._snapshots is not None and self._restored:
            size = await self._snapshots.save(self.state)
            log.debug("drift state saved: %d bytes", size)

    async def close(self) -> None:
        await self._flush()
        await self.snapshot()
        for sink in self.sinks:
            await sink.close()
