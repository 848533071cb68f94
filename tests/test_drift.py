"""Drift on synthetic streams, through a region partition and the global stage as the worker runs them:
planted drift found in time, quiet when stationary, cooldown, recovery."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson

from relevo.drift.alerts import Alert
from relevo.drift.combined import GlobalDrift
from relevo.drift.regional import RegionalDrift
from relevo.drift.sinks import ListSink
from relevo.streams.events import Event
from tests.regionkit import Feeder


def searches(ctr: list[tuple[int, float]], region: str = "FR", seed: int = 0,
             start: int = 0) -> Iterator[Event]:
    """One search a second with three results, clicked (top result) with the given probability.

    ``ctr`` is a list of (number of searches, click probability) segments.
    """
    rng = random.Random(seed)
    i = start
    common = {"region": region, "locale": "fr-FR", "user_id": "u", "session_id": "s"}
    for count, p in ctr:
        for _ in range(count):
            ts = 1_700_000_000_000 + 1000 * i
            yield {**common, "type": "search", "event_id": f"s{i}", "ts": ts, "search_id": f"q{i}",
                   "query": "hôtel", "results": ["a", "b", "c"]}
            if rng.random() < p:
                yield {**common, "type": "click", "event_id": f"c{i}", "ts": ts + 1, "search_id": f"q{i}",
                       "item_id": "a", "position": 0, "kind": "click"}
            i += 1


class DriftMonitor:
    """One region partition's drift and the global stage, fed in process (one source, in order)."""

    def __init__(self, sinks: list[Any], cooldown_ms: int = 30 * 60_000, **regional: Any) -> None:
        self.buckets: list[bytes] = []

        async def send(value: bytes) -> None:
            self.buckets.append(value)
        self.regional = RegionalDrift(0, None, sinks, send, cooldown_ms=cooldown_ms, **regional)
        self.combined = GlobalDrift(1, None, sinks, cooldown_ms=cooldown_ms)
        self.feeder = Feeder([self.regional])

    async def process(self, events: list[Event]) -> None:
        self.feeder.send(events)
        await self.feeder.flush()
        self.combined.handle(self.buckets)
        self.buckets.clear()
        await self.combined.flush()


async def run(monitor: DriftMonitor, events: Iterator[Event], batch: int = 200) -> None:
    buffer = list(events)
    for i in range(0, len(buffer), batch):
        await monitor.process(buffer[i:i + batch])
    monitor.feeder.finish()
    await monitor.process([])


def opened(sink: ListSink, metric: str = "ctr") -> list[Alert]:
    return [a for a in sink.alerts if a.metric == metric and not a.resolved]


async def test_planted_ctr_drop_is_detected_within_bounds() -> None:
    sink = ListSink()
    monitor = DriftMonitor(sinks=[sink], ctr_timeout_ms=60_000)
    await run(monitor, searches([(3000, 0.4), (2000, 0.2)]))
    first = opened(sink)
    change_ts = 1_700_000_000_000 + 3000 * 1000
    assert {a.region for a in first} == {"FR", "*"}
    fr = next(a for a in first if a.region == "FR")
    # ctr outcomes close after the 60 s timeout, so the delay includes it
    assert 0 < fr.first_seen - change_ts < 600 * 1000, fr
    assert fr.statistic < -0.2 and fr.detector == "ADWIN"
    assert abs(fr.baseline - 0.4) < 0.05 and fr.current < 0.3


async def test_stationary_stream_stays_quiet() -> None:
    sink = ListSink()
    monitor = DriftMonitor(sinks=[sink], ctr_timeout_ms=60_000)
    await run(monitor, searches([(20_000, 0.3)], seed=3))
    assert sink.alerts == []


async def test_recovery_is_reported_and_flapping_within_cooldown_stays_quiet() -> None:
    sink = ListSink()
    monitor = DriftMonitor(sinks=[sink], ctr_timeout_ms=60_000, cooldown_ms=3_600_000)
    await run(monitor, searches([(2000, 0.5), (1000, 0.1), (1500, 0.5), (800, 0.1), (1500, 0.5)]))
    fr = [a for a in sink.alerts if a.region == "FR" and a.metric == "ctr"]
    # one alert, its recovery, and nothing for the second dip: it came within the cooldown
    assert [a.resolved for a in fr] == [False, True]
    assert fr[0].id == fr[1].id and fr[1].resolved_at > fr[0].first_seen

    sink.alerts.clear()
    late = DriftMonitor(sinks=[sink], ctr_timeout_ms=60_000, cooldown_ms=60_000)
    await run(late, searches([(2000, 0.5), (1000, 0.1), (1500, 0.5), (800, 0.1)]))
    fr = [a for a in sink.alerts if a.region == "FR" and a.metric == "ctr"]
    assert [a.resolved for a in fr] == [False, True, False]  # past the cooldown: a new alert


async def test_warm_up_holds_alerts_back() -> None:
    sink = ListSink()
    monitor = DriftMonitor(sinks=[sink], ctr_timeout_ms=60_000)
    await run(monitor, searches([(150, 0.9), (150, 0.0)]))  # a collapse, but before warm-up ends
    assert opened(sink) == []


def test_a_silent_region_reports_the_same_zeros_however_the_horizon_moves() -> None:
    from relevo.drift.signals import Signals

    minute = 60_000
    event = {"type": "purchase", "region": "IE", "locale": "en-IE", "user_id": "u", "session_id": "s",
             "item_id": "i", "order_id": "o", "price": 1.0}

    def volumes(horizon_steps: list[int]) -> list[tuple[float, int]]:
        signals = Signals(max_gap=5)
        out = signals.observe([{**event, "event_id": "a", "ts": 0}])
        for horizon in horizon_steps:  # three silent hours, seen in one step or in many
            out += signals.observe([], horizon=horizon)
        out += signals.observe([{**event, "event_id": "b", "ts": 180 * minute}], horizon=180 * minute)
        return [(value, ts) for _, metric, value, ts in out if metric == "volume"]

    one_step = volumes([179 * minute])
    assert one_step == volumes(list(range(minute, 179 * minute, 7 * minute))) == volumes([3 * minute, 179 * minute])
    assert [v for v, _ in one_step] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_the_global_stage_combines_the_same_buckets_whichever_partition_reports_first() -> None:
    """A partition whose first bucket is earlier than the other's may report second: the global
    stage must not have started from the first report's earliest bucket (it then never settled)."""
    def record(partition: int, buckets: list[int]) -> bytes:
        return orjson.dumps({"p": partition, "through": 12, "buckets": [[n, 2, 1, {}] for n in buckets]})
    early, late = record(1, [3, 5]), record(0, [4, 5, 7])
    apart, together = GlobalDrift(2), GlobalDrift(2)
    apart.handle([late])
    assert apart.pending_observations == [] and not apart.settled()
    apart.handle([early])
    together.handle([early, late])
    assert apart.settled() and together.settled()
    assert apart.pending_observations == together.pending_observations
    assert [ts // 60_000 for _, metric, _, ts in together.pending_observations if metric == "volume"] == list(
        range(3, 13))
