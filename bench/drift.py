"""Drift detection on replays of real data: delay after a planted change, false alarms, cost.

Delay: the Trivago slice is replayed through ``DriftMonitor`` in-process; from a
chosen time on, in the country with the most events, clicks land on random
results (a click-quality collapse) or 50% / 30% of its clicks are dropped (a
click-through drop). We count that country's events between the change and the
first alert on ``ctr`` or ``click_rank``, for each river detector behind the same
relative-effect gate. False alarms: the unmodified Trivago slice (on which the
thresholds were tuned) and the unmodified XMarket ratings (the check: replayed as
purchases in date order, region = market) with every metric watched. Cost:
events/s through the monitor against a no-op processor on the same batches.

    python -m bench.drift [--limit N] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from river.drift import KSWIN, PageHinkley
from river.drift.binary import DDM, EDDM

from bench.report import record, table
from relevo.core.settings import SHARED_DATA
from relevo.drift.alerts import Alert
from relevo.drift.detectors import RiverDetector
from relevo.drift.inject import drop_clicks, random_clicks
from relevo.drift.metrics import GLOBAL, METRICS, MetricSpec
from relevo.drift.monitor import DriftMonitor
from relevo.drift.sinks import ListSink
from relevo.streams.datasets import trivago
from relevo.streams.events import Event, validate

log = logging.getLogger(__name__)

WATCHED = ("ctr", "click_rank")  # the metrics a click change should move
DEFAULT = "ADWIN (default)"
XMARKET_LOCALES = {"ca": "en-CA", "de": "de-DE", "fr": "fr-FR", "in": "en-IN", "jp": "ja-JP",
                   "mx": "es-MX", "uk": "en-GB"}
# Alternatives to the default (ADWIN, as declared in drift.metrics): river detector, its
# parameters, and whether it watches an error rate (the binary DDM family).
DETECTORS: dict[str, tuple[Callable[..., object], dict[str, object], bool]] = {
    "PageHinkley": (PageHinkley, {"threshold": 50.0, "delta": 0.005}, False),
    "KSWIN": (KSWIN, {"alpha": 1e-4, "window_size": 300, "stat_size": 100, "seed": 1}, False),
    "DDM": (DDM, {}, True),
    "EDDM": (EDDM, {}, True),
}




class NoOp:
    name = "noop"

    async def process(self, events: Sequence[Event]) -> None:
        return None

    async def close(self) -> None:
        return None


def with_detector(name: str) -> dict[str, MetricSpec]:
    """The click metrics, each with river detector ``name`` behind the same gate as the default."""
    if name == DEFAULT:
        return {metric: METRICS[metric] for metric in WATCHED}
    make, params, as_error = DETECTORS[name]
    specs = {}
    for metric in WATCHED:
        default = METRICS[metric]
        gate = default.make.keywords  # type: ignore[attr-defined]  # threshold, window of the default
        specs[metric] = dataclasses.replace(default, make=partial(RiverDetector, make, params, **gate,
                                                                  as_error=as_error))
    return specs


def xmarket_events(root: Path) -> list[Event]:
    """XMarket 5-core ratings as purchase events in date order (price unknown: 0)."""
    rows = []
    for market, locale in XMARKET_LOCALES.items():
        with open(root / f"{market}_5core.txt") as fh:
            next(fh)
            for n, line in enumerate(fh):
                user, item, _rate, date = line.split()
                day = datetime.date.fromisoformat(date)
                ts = int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()) * 1000
                rows.append((ts, market, n, user, item, locale))
    rows.sort()
    return [validate({"type": "purchase", "event_id": f"xm-{m}-{n}", "ts": ts, "user_id": user,
                      "session_id": user, "region": m.upper(), "locale": locale, "item_id": item,
                      "order_id": f"xm-{m}-{n}", "price": 0.0})
            for ts, m, n, user, item, locale in rows]


async def replay(events: Sequence[Event], processor: object, batch: int) -> float:
    """Seconds to push ``events`` through ``processor`` in batches."""
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        await processor.process(events[i:i + batch])  # type: ignore[attr-defined]
    await processor.close()  # type: ignore[attr-defined]
    return time.perf_counter() - started


def alerts_of(events: Sequence[Event], metrics: Mapping[str, MetricSpec], batch: int) -> list[Alert]:
    """The alerts raised (not the recoveries) while replaying ``events``."""
    sink = ListSink()
    asyncio.run(replay(events, DriftMonitor(sinks=[sink], metrics=metrics), batch))
    return [a for a in sink.alerts if not a.resolved]


def delay(events: Sequence[Event], metrics: Mapping[str, MetricSpec], batch: int, region: str,
          start_ts: int) -> str:
    """The region's events from the change up to its first alert after it (the replay stops there)."""
    async def first_alert() -> int | None:
        sink = ListSink()
        monitor = DriftMonitor(sinks=[sink], metrics=metrics)
        for i in range(0, len(events), batch):
            await monitor.process(events[i:i + batch])
            fired = [a.first_seen for a in sink.alerts if a.region == region and a.first_seen >= start_ts]
            if fired:
                return min(fired)
        return None

    fired = asyncio.run(first_alert())
    if fired is None:
        return "not detected"
    return f"{sum(1 for e in events if e['region'] == region and start_ts <= e['ts'] <= fired):,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None,
                        help="replay only the first N Trivago events (a smoke run: below about 60,000 "
                             "the country has too few searches to pass the warm-up and detect anything)")
    parser.add_argument("--batch", type=int, default=500, help="events per processed batch")
    parser.add_argument("--change-at", type=float, default=0.4,
                        help="the change starts after this share of the country's events")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    stream = list(trivago.events(SHARED_DATA / "trivago" / "trivago_val_100k.parquet"))[:args.limit]
    xmarket = xmarket_events(SHARED_DATA / "xmarket")
    region, _ = Counter(e["region"] for e in stream).most_common(1)[0]
    region_ts = [e["ts"] for e in stream if e["region"] == region]
    start_ts = region_ts[int(len(region_ts) * args.change_at)]
    scenarios = {
        "random clicks": lambda: list(random_clicks(stream, region, start_ts)),
        "drop 50% clicks": lambda: list(drop_clicks(stream, region, start_ts, 0.5)),
        "drop 30% clicks": lambda: list(drop_clicks(stream, region, start_ts, 0.3)),
    }
    planted = {name: make() for name, make in scenarios.items()}

    rows = []
    for name in (DEFAULT, *DETECTORS):
        specs = with_detector(name)
        quiet = alerts_of(stream, specs, args.batch)
        row: list[object] = [name, *(delay(changed, specs, args.batch, region, start_ts)
                                     for changed in planted.values())]
        row.append(f"{len(quiet)} ({len(quiet) * 100_000 / len(stream):.1f}/100k)")
        rows.append(row)
    delays = table(["detector (ctr, click_rank)", *(f"{region}: {s}" for s in scenarios),
                    "false alarms, unmodified Trivago"], rows)

    alarm_rows = []
    for label, events in (("Trivago (tuned on)", stream), ("XMarket (check)", xmarket)):
        alerts = alerts_of(events, METRICS, args.batch)
        per_metric = Counter(a.metric for a in alerts)
        for metric in METRICS:
            regional = sum(1 for a in alerts if a.metric == metric and a.region != GLOBAL)
            alarm_rows.append([label, len(events), metric, regional, per_metric[metric] - regional,
                               per_metric[metric] * 100_000 / len(events)])
    alarms = table(["stream", "events", "metric", "alerts (regions)", "alerts (global)",
                    "alerts / 100k events"], alarm_rows)

    cost_rows = []
    for label, processor in (("no-op processor (drift off)", NoOp()),
                             ("DriftMonitor, all metrics (drift on)", DriftMonitor())):
        seconds = asyncio.run(replay(stream, processor, args.batch))
        cost_rows.append([label, len(stream), seconds, len(stream) / seconds, seconds * 1e6 / len(stream)])
    cost = table(["processor", "events", "seconds", "events/s", "µs/event"], cost_rows)
    notes = (f"Change in {region} ({len(region_ts):,} of {len(stream):,} events) from "
             f"{datetime.datetime.fromtimestamp(start_ts / 1000, datetime.UTC):%Y-%m-%d %H:%M} UTC; delay = "
             f"{region} events from the change to its first alert on ctr or click_rank. Batches of "
             f"{args.batch} events, in-process, no Redis. The replay squeezes two days of event time "
             "into seconds, so the per-minute work (volume buckets of every region) weighs more per "
             "event than it would live.")
    command = " ".join(["python -m bench.drift", *sys.argv[1:]])
    record("Drift detection: delay, false alarms, cost", command,
           "\n\n".join([delays, alarms, cost]), notes)


if __name__ == "__main__":
    main()
