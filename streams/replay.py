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

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

from tqdm import tqdm

from relevo.core.settings import Settings
from relevo.streams.events import Event
from relevo.streams.producer import EventProducer

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


async def replay_to_kafka(events: Iterable[Event], settings: Settings, speed: float | None = None,
                          limit: int | None = None) -> ReplayStats:
    """``replay`` into the event topics of ``settings`` (what ``relevo replay`` runs)."""
    async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                             partitions=settings.partitions) as producer:
        return await replay(events, producer, speed=speed, limit=limit)
