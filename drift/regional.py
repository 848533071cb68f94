"""Drift on one partition of the region stream: its regions' detectors, and its share of the global stream.

``RegionalDrift`` is a region operator (``relevo.streams.regions``): it takes the
partition's events in event-time order, turns them into observations (``Signals``),
feeds its regions' detectors (``Detection``), and sums what the global stream needs
into minute buckets (``GlobalBuckets``). A bucket is sent to ``drift.global`` once no
event or search outcome can still change it; the global stage combines every
partition's buckets (``relevo.drift.combined``). So each region's state lives with the
partition of its key and the global one with the global stage: neither depends on which
worker read which user.

>>> from relevo.drift.sinks import ListSink
>>> sent = []
>>> async def send(value): sent.append(value)
>>> sink = ListSink()
>>> drift = RegionalDrift(0, None, [sink], send, ctr_timeout_ms=60_000)
>>> base = {"type": "click", "region": "FR", "user_id": "u", "session_id": "s", "item_id": "i", "kind": "click"}
>>> stream = [{**base, "event_id": str(i), "ts": 1_000 * i, "position": 0 if i < 3000 else 20} for i in range(4000)]
>>> drift.apply(stream, horizon=4_000_000, reach=4_000_000)
>>> import asyncio; asyncio.run(drift.flush())
>>> [(a.region, a.metric, 3000 < a.first_seen // 1000 < 3100) for a in sink.alerts]
[('FR', 'click_rank', True)]
>>> record = orjson.loads(sent[0]); record["p"], record["through"], record["buckets"][0][:3]
(0, 63, [0, 60, 0])
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from relevo.drift.detection import Detection, DetectionState, Observation
from relevo.drift.metrics import METRICS, MetricSpec
from relevo.drift.signals import Signals
from relevo.drift.sinks import AlertStore, Sink
from relevo.streams.events import Event

PER_BUCKET = ("volume", "purchase_rate")  # the global stream recounts these from its buckets' events


@dataclasses.dataclass
class Bucket:
    """What one minute contributes to the global stream: events, purchases, and each metric's values."""

    events: int = 0
    purchases: int = 0
    values: dict[str, Counter[Any]] = dataclasses.field(default_factory=dict)

    def to_row(self, bucket: int) -> list[Any]:
        return [bucket, self.events, self.purchases,
                {m: sorted(c.items(), key=lambda kv: str(kv[0])) for m, c in sorted(self.values.items())}]


@dataclasses.dataclass
class GlobalBuckets:
    """Minute buckets for the global stream, closed once ``settle_ms`` of event time has passed them."""

    bucket_ms: int
    settle_ms: int  # a search's outcome is known only after the click timeout
    open: dict[int, Bucket] = dataclasses.field(default_factory=dict)
    through: int = -1  # every bucket up to this one has been sent

    def add(self, events: Sequence[Event], observations: Sequence[Observation]) -> None:
        for event in events:
            bucket = self._bucket(event["ts"])
            bucket.events += 1
            bucket.purchases += event["type"] == "purchase"
        for _, metric, value, ts in observations:
            if metric not in PER_BUCKET:
                self._bucket(ts).values.setdefault(metric, Counter())[value] += 1

    def _bucket(self, ts: int) -> Bucket:
        number = ts // self.bucket_ms
        if number not in self.open:
            self.open[number] = Bucket()
        return self.open[number]

    def close(self, until: float) -> list[tuple[int, Bucket]] | None:
        """The buckets final at event time ``until`` and not yet sent (None: nothing new closed)."""
        if until in (float("inf"), float("-inf")):
            return None
        last = int(until - self.settle_ms) // self.bucket_ms - 1
        if last <= self.through:
            return None
        closed = sorted((n, b) for n, b in self.open.items() if n <= last)
        for number, _ in closed:
            del self.open[number]
        self.through = last
        return closed


@dataclasses.dataclass
class RegionalState:
    signals: Signals
    detection: DetectionState
    buckets: GlobalBuckets


class RegionalDrift:
    """The drift operator of one region partition (see the module doc)."""

    name = "drift"

    def __init__(self, partition: int, store: AlertStore | None, sinks: Sequence[Sink],
                 send_buckets: Callable[[bytes], Awaitable[None]], *, metrics: Mapping[str, MetricSpec] = METRICS,
                 cooldown_ms: int = 30 * 60_000, ctr_timeout_ms: int = 10 * 60_000, bucket_ms: int = 60_000,
                 max_regions: int = 5_000) -> None:
        self.partition, self.store, self.sinks, self.send_buckets = partition, store, list(sinks), send_buckets
        self.detection = Detection(metrics, cooldown_ms, max_regions)
        self._state = RegionalState(Signals(ctr_timeout_ms, bucket_ms, max_regions=max_regions),
                                    self.detection.state, GlobalBuckets(bucket_ms, ctr_timeout_ms + bucket_ms))
        self._closed: list[tuple[int, Bucket]] = []
        self._through: int | None = None

    @property
    def state(self) -> RegionalState:
        return self._state

    @state.setter
    def state(self, restored: RegionalState) -> None:
        self._state = restored
        self.detection.state = restored.detection

    def apply(self, events: Sequence[Event], horizon: float, reach: int) -> None:
        state = self._state
        observations = state.signals.observe(events, horizon)
        self.detection.observe(observations)
        state.buckets.add(events, observations)
        closed = state.buckets.close(horizon if horizon != float("inf") else reach)
        if closed is not None:
            self._closed += closed
            self._through = state.buckets.through

    async def flush(self) -> None:
        await self.detection.publish(self.store, self.sinks)
        if self._through is not None:
            rows = [bucket.to_row(number) for number, bucket in self._closed]
            await self.send_buckets(orjson.dumps({"p": self.partition, "through": self._through, "buckets": rows}))
            self._closed, self._through = [], None
