"""Replay a dataset into Kafka in event-time order, as fast as possible or at a compressed pace.

With ``speed=60`` an hour of event time takes a minute of wall time: each event
is sent once ``(ts - first ts) / speed`` has elapsed since the replay began
(events sharing a ``tick`` go out together). Events already late go out at
once, so an input that is not sorted by time is sent in its own order.

>>> pacer = Pacer(speed=60.0, now=lambda: 10.0)
>>> pacer.delay(1_541_599_523_000), pacer.delay(1_541_599_523_000 + 3_600_000)
(0.0, 60.0)
>>> Pacer(speed=None).delay(9_999_999_999_999)
0.0
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from relevo.settings import Settings
from streams.datasets import DATASETS, DatasetNotFound, open_dataset
from streams.events import Event
from streams.producer import EventProducer

log = logging.getLogger(__name__)


@dataclass
class ReplayStats:
    """What a replay sent, per event type, and how long it took."""

    sent: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def events_per_s(self) -> float:
        return self.total / self.elapsed_s if self.elapsed_s else 0.0


class Pacer:
    """Maps event time to wall time compressed by ``speed``; ``None`` means no waiting."""

    def __init__(self, speed: float | None, now: Callable[[], float] = time.monotonic) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self.now = now
        self.origin: tuple[int, float] | None = None  # (first event ts in ms, wall time it was due)

    def delay(self, ts: int) -> float:
        """Seconds to wait before the event at ``ts`` is due."""
        if self.speed is None:
            return 0.0
        if self.origin is None:
            self.origin = (ts, self.now())
        first_ts, start = self.origin
        return max(0.0, start + (ts - first_ts) / 1000 / self.speed - self.now())


async def replay(events: Iterable[Event], producer: EventProducer, speed: float | None = None,
                 limit: int | None = None, progress: bool = True, chunk: int = 5000,
                 tick: float = 0.02) -> ReplayStats:
    """Send ``events`` in their order through ``producer``, paced by ``speed`` (see module doc).

    Events go out in chunks of up to ``chunk``; when pacing, a chunk also closes
    when the next event is due more than ``tick`` seconds from now.
    """
    stats = ReplayStats()
    pacer = Pacer(speed)
    started = time.monotonic()
    pending: list[Event] = []

    async def flush() -> None:
        await producer.send(pending)
        stats.sent.update(event["type"] for event in pending)
        bar.update(len(pending))
        pending.clear()

    # disable=None lets tqdm hide the bar when stderr is not a terminal.
    with tqdm(total=limit, unit="ev", desc="replay", disable=None if progress else True) as bar:
        for event in islice(events, limit):
            wait = pacer.delay(event["ts"])
            if pending and (len(pending) >= chunk or wait > tick):
                await flush()
                wait = pacer.delay(event["ts"])
            if wait > tick:
                await asyncio.sleep(wait)
            pending.append(event)
        if pending:
            await flush()
    stats.elapsed_s = time.monotonic() - started
    return stats


def register_cli(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``replay DATASET [--path P] [--speed X] [--limit N]``."""
    parser = subparsers.add_parser("replay", help="replay a dataset into Kafka in event-time order")
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which dataset adapter to use")
    parser.add_argument("--path", type=Path, help="the dataset file or directory (default: ../shared/data)")
    parser.add_argument("--speed", type=float,
                        help="compress event time by this factor (60: an hour a minute); default: no pacing")
    parser.add_argument("--limit", type=int, help="send at most this many events")
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace, settings: Settings) -> int:
    """The ``replay`` subcommand against ``settings.kafka_bootstrap_servers``."""
    if not settings.kafka_bootstrap_servers:
        log.error("no Kafka to replay into: start the stack with `relevo up`, or set KAFKA_BOOTSTRAP_SERVERS")
        return 2
    try:
        events = open_dataset(args.dataset, args.path)
    except DatasetNotFound as exc:
        log.error("%s", exc)
        return 2
    stats = asyncio.run(_replay_to_kafka(events, settings, args.speed, args.limit))
    log.info("replayed %d events in %.1f s (%.0f events/s): %s", stats.total, stats.elapsed_s,
             stats.events_per_s, ", ".join(f"{n} {t}" for t, n in sorted(stats.sent.items())))
    return 0


async def _replay_to_kafka(events: Iterable[Event], settings: Settings, speed: float | None,
                           limit: int | None) -> ReplayStats:
    async with EventProducer(settings.kafka_bootstrap_servers,
                             topic_for=lambda event_type: settings.topic(f"events.{event_type}"),
                             partitions=settings.partitions) as producer:
        return await replay(events, producer, speed=speed, limit=limit)
