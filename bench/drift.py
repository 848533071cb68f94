"""Drift detection through the production path: broker, worker process(es), region and global stages.

Each scenario produces its whole stream into the embedded broker, starts one or two
workers (``RELEVO_PROCESSORS=drift``: the stages under test, without the feature
writes), waits until the stages have drained, and reads the alerts from the alert
store the API serves:

- **delay**: the Trivago slice with a 30% click-through drop planted in the country
  with the most events, from ``--change-at`` of its events on: that country's events
  between the change and its first ``ctr`` or ``click_rank`` alert (target ≤ 2,000);
- **false alarms**: the unmodified Trivago slice and XMarket's ratings replayed as
  purchases (region = market): alerts opened per 100,000 events (target ≤ 1).

Baseline in the same run: the same detectors fed in process, in the file's order (one
region operator over the whole stream and the global stage beside it), which is what
the production path must agree with, whatever the worker count.

    python -m bench.drift [--limit N] [--change-at 0.4]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.report import record, table
from relevo.core.keys import Keys
from relevo.core.redis import connect
from relevo.core.settings import SHARED_DATA, Settings
from relevo.drift.alerts import Alert
from relevo.drift.combined import GlobalDrift
from relevo.drift.inject import drop_clicks
from relevo.drift.regional import RegionalDrift
from relevo.drift.sinks import AlertStore, ListSink
from relevo.runtime.processes import Runtime
from relevo.streams.datasets import trivago
from relevo.streams.datasets.xmarket import events as xmarket_events
from relevo.streams.events import Event
from relevo.streams.producer import EventProducer

log = logging.getLogger(__name__)

WATCHED = ("ctr", "click_rank")  # the metrics a click change should move


async def _read_alerts(settings: Settings) -> list[Alert]:
    redis = connect(settings.redis_url)
    try:
        return await AlertStore(redis, Keys(settings.key_prefix)).query(limit=100_000)
    finally:
        await redis.aclose()


async def _produce(settings: Settings, events: Sequence[Event]) -> None:
    async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                             partitions=settings.partitions) as producer:
        await producer.send(events)


def through_workers(events: Sequence[Event], workers: int, name: str) -> list[Alert]:
    """The alerts the production path raises on ``events`` with ``workers`` worker processes."""
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="relevo-drift-")), app_id=name, key_prefix=name,
                        partitions=4, processors="drift", idle_s=2.0, checkpoint_s=2.0)
    with Runtime(settings, workers=0, api=False) as runtime:
        asyncio.run(_produce(runtime.settings, events))
        for _ in range(workers):
            runtime.start_worker()
        runtime.wait_drained(timeout=1800)
        return asyncio.run(_read_alerts(runtime.settings))


def in_process(events: Sequence[Event], batch: int = 500) -> list[Alert]:
    """The baseline: the same operators over the stream in its own order, in this process."""
    sink, buckets = ListSink(), []

    async def send(value: bytes) -> None:
        buckets.append(value)

    async def go() -> None:
        regional, combined = RegionalDrift(0, None, [sink], send), GlobalDrift(1, None, [sink])
        for i in range(0, len(events), batch):
            chunk = events[i:i + batch]
            regional.apply(chunk, horizon=chunk[-1]["ts"], reach=chunk[-1]["ts"])
            await regional.flush()
            combined.handle(buckets)
            buckets.clear()
            await combined.flush()
        regional.apply([], horizon=float("inf"), reach=events[-1]["ts"])
        await regional.flush()
        combined.handle(buckets)
        await combined.flush()
    asyncio.run(go())
    return sink.alerts


def opened(alerts: Sequence[Alert]) -> list[Alert]:
    """Each alert once (the store keeps its latest state; a sink also hears its recovery)."""
    return list({a.id: a for a in alerts}.values())


def delay(events: Sequence[Event], alerts: Sequence[Alert], region: str, start_ts: int) -> int | None:
    """The region's events from the change up to its first click alert after it (None: not detected)."""
    fired = [a.first_seen for a in alerts if a.region == region and a.metric in WATCHED and a.first_seen >= start_ts]
    if not fired:
        return None
    return sum(1 for e in events if e["region"] == region and start_ts <= e["ts"] <= min(fired))


def per_100k(alerts: Sequence[Alert], events: Sequence[Event]) -> float:
    return len(opened(alerts)) / len(events) * 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N Trivago events")
    parser.add_argument("--change-at", type=float, default=0.4,
                        help="the change starts after this share of the country's events")
    parser.add_argument("--fraction", type=float, default=0.3, help="share of the country's clicks dropped")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    stream = list(trivago.events(SHARED_DATA / "trivago" / "trivago_val_100k.parquet"))[:args.limit]
    country = max({e["region"] for e in stream}, key=lambda r: sum(e["region"] == r for e in stream))
    own = [e["ts"] for e in stream if e["region"] == country]
    start_ts = own[int(len(own) * args.change_at)]
    dropped = list(drop_clicks(stream, country, start_ts, args.fraction))
    xmarket = xmarket_events(SHARED_DATA / "xmarket")
    scenarios = {"trivago, ctr drop": dropped, "trivago, unmodified": stream, "xmarket, unmodified": xmarket}

    rows, delays, alarms = [], [], []
    for scenario, events in scenarios.items():
        runs = {"in process, file order (baseline)": in_process(events)}
        for workers in (1, 2):
            log.warning("%s: %d events through %d worker(s)", scenario, len(events), workers)
            runs[f"{workers} worker{'s' if workers > 1 else ''}"] = through_workers(
                events, workers, f"drift-{len(rows)}-{workers}")
        for how, alerts in runs.items():
            found = delay(events, alerts, country, start_ts) if scenario.endswith("drop") else None
            rate = per_100k(alerts, events)
            rows.append([scenario, how, f"{len(events):,}", len(opened(alerts)), f"{rate:.2f}",
                         "-" if not scenario.endswith("drop") else (f"{found:,}" if found is not None
                                                                      else "not detected")])
            if not how.startswith("in process"):
                if scenario.endswith("drop"):
                    delays.append(found if found is not None else float("inf"))
                else:
                    alarms.append(rate)
    text = table(["scenario", "path", "events", "alerts opened", "per 100k events",
                  f"{country} events to detect"], rows)
    record("Drift through the production path (broker, workers, region and global stages)", None,
           text, f"{args.fraction:.0%} of {country}'s clicks dropped from {args.change_at:.0%} of its events "
           f"on; false alarms: alerts opened on the unmodified streams (every metric, every region and '*').")
    worst_delay = max(delays)
    print(f"RESULT drift delay_events={worst_delay if worst_delay != float('inf') else 'none'} "
          f"false_alarms_per_100k={max(alarms):.2f}")


if __name__ == "__main__":
    main()
