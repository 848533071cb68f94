"""The region stream: events re-keyed by region, so state about a region lives with one partition.

The event topics are partitioned by user, so each worker sees only its users. Drift
statistics and the examples builder's context are about regions and their items, so
the worker's ``RegionForwarder`` (a batch processor) re-sends every valid event to
``events.by_region``, keyed by region (Kafka's default partitioner on the region: any
producer agrees), together with a ``Mark`` for every source it reads. Each partition
of that topic has one ``RegionPartition`` (a ``PartitionState`` of a
``PartitionedStage``): an ``EventTimeMerge`` puts its events back into one
deterministic event-time order, whichever worker forwarded them and whatever order the
topics were read in, and hands them to the region operators (drift, examples).

A record of the region stream is JSON: ``{"m": {source: [watermark, lag, at]},
"e": [[source, offset, index, event], ...]}``.

>>> record = encode_record({"events.click:0": Mark(5, 0, 9)},
...                        [{"type": "click", "ts": 5, "event_id": "c", "_source": "events.click:0", "_pos": (3, 0)}])
>>> part = RegionPartition(0, [], {"events.click:0"}, idle_ms=0)
>>> part.handle([record]); part.merge.clock
5
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from relevo.core.settings import Settings
from relevo.streams.eventtime import POSITION, SOURCE, Event, EventTimeMerge, Mark, SourceProgress, source_of
from relevo.streams.stages import MakeState, Snapshots, handle_all
from relevo.streams.topics import BY_REGION, event_topics

log = logging.getLogger(__name__)

STAGE = "regions"  # the region stream's stage: its consumer group suffix and snapshot names
MAX_EVENTS_PER_RECORD = 1500  # keeps a record well under Kafka's 1 MiB
# Events applied per ``handle``: a source turning idle can release seconds of held events at
# once, and the operators' ~30 µs each would hold the loop the feature writes share that long.
APPLY_LIMIT = 1000


def region_partition(region: str, partitions: int) -> int:
    """The partition of a region: Kafka's default partitioner applied to the region as key.

    >>> region_partition("FR", 4) == region_partition("FR", 4) < 4
    True
    """
    return (murmur2(region.encode()) & 0x7FFFFFFF) % partitions


def sources(settings: Settings) -> list[str]:
    """Every source of the region stream: each partition of each event topic."""
    return [source_of(topic, p) for topic in event_topics(settings) for p in range(settings.partitions)]


def encode_record(marks: dict[str, Mark], events: Sequence[Event]) -> bytes:
    rows = [[e[SOURCE], *e[POSITION], {k: v for k, v in e.items() if k not in (SOURCE, POSITION)}] for e in events]
    return orjson.dumps({"m": {s: [m.watermark, m.lag, m.at] for s, m in marks.items()}, "e": rows})


class RegionForwarder:
    """The batch processor that re-keys the worker's valid events by region, with its sources' marks.

    Marks also go to every partition once a second (``tick``), batches or not, so a region
    partition hears about sources with nothing to say (an empty topic, a worker caught up).
    Records are delivered before ``process`` returns, so Faust commits only what was forwarded.
    """

    name = "regions"

    def __init__(self, send: Callable[[bytes, int], Awaitable[None]], flush: Callable[[], Awaitable[None]],
                 partitions: int, progress: SourceProgress, heartbeat_s: float = 1.0) -> None:
        self.send, self.flush, self.partitions, self.progress = send, flush, partitions, progress
        self.heartbeat_s = heartbeat_s
        self._marked_at = [0.0] * partitions

    async def process(self, events: Sequence[Event]) -> None:
        by_partition: dict[int, list[Event]] = {}
        for event in events:
            by_partition.setdefault(region_partition(event["region"], self.partitions), []).append(event)
        marks = self.progress.marks(at=int(time.time() * 1000))
        for partition, chunk in by_partition.items():
            for start in range(0, len(chunk), MAX_EVENTS_PER_RECORD):
                await self.send(encode_record(marks, chunk[start:start + MAX_EVENTS_PER_RECORD]), partition)
            self._marked_at[partition] = time.monotonic()
        await self._heartbeat(marks, every_s=self.heartbeat_s)
        await self.flush()

    async def tick(self) -> None:
        await self._heartbeat(self.progress.marks(at=int(time.time() * 1000)), every_s=self.heartbeat_s)
        await self.flush()

    async def _heartbeat(self, marks: dict[str, Mark], every_s: float) -> None:
        now = time.monotonic()
        for partition in range(self.partitions):
            if now - self._marked_at[partition] >= every_s:
                await self.send(encode_record(marks, ()), partition)
                self._marked_at[partition] = now

    async def close(self) -> None:
        await self.flush()


class RegionOperator(Protocol):
    """What runs on a region partition's ordered events (drift, the examples builder)."""

    name: str
    state: Any  # picklable: snapshotted with the partition

    def apply(self, events: Sequence[Event], horizon: float, reach: int) -> None:
        """Take events in event-time order. ``horizon``: the event time every source has reached
        (inf once every source is idle: nothing older can come); ``reach``: the furthest any has."""

    async def flush(self) -> None:
        """Send what ``apply`` produced."""


class RegionPartition:
    """One partition of the region stream: the merge, then the operators, in event-time order.

    ``on_clock`` hears the partition's stream clock (event time reached, robust to wild
    timestamps) whenever it moves: the worker publishes it as the clock features are read at.
    A call applies at most ``apply_limit`` events; the rest of what the merge could release
    stays in it (``backlog``) for the next call, which the stage makes after yielding. The
    operators then hear the time of the first event held back as the horizon, so they finish
    exactly what one call would have.
    """

    def __init__(self, partition: int, operators: Sequence[RegionOperator], sources: Iterable[str],
                 idle_ms: int = 5_000, dump: dict[str, Any] | None = None,
                 on_clock: Callable[[int], Awaitable[None]] | None = None, apply_limit: int = APPLY_LIMIT) -> None:
        self.partition, self.operators, self.on_clock = partition, list(operators), on_clock
        self.apply_limit = apply_limit
        self.merge = EventTimeMerge(sources, idle_ms) if dump is None else dump["merge"]
        for operator in self.operators:
            if dump is not None and operator.name in dump["operators"]:
                operator.state = dump["operators"][operator.name]
        self._published = self.merge.clock
        self._revision, self._horizon = 0, self.merge.horizon()

    def handle(self, values: Sequence[bytes]) -> None:
        merge, pushed = self.merge, False
        for value in values:
            record = orjson.loads(value)
            for source, (watermark, lag, at) in record["m"].items():
                merge.mark(source, Mark(watermark, lag, at))
            for source, offset, index, event in record["e"]:
                pushed = merge.push(source, (offset, index), event) or pushed
        ready, horizon, reach = merge.ready(self.apply_limit), merge.horizon(), merge.reach
        if merge.left is not None:  # the rest comes with the next call: nothing may pass it before
            horizon = merge.left
        for operator in self.operators:
            operator.apply(ready, horizon, reach)
        # A heartbeat that moves no horizon changes only the marks, which a replay reads again.
        if pushed or horizon != self._horizon:
            self._revision, self._horizon = self._revision + 1, horizon

    def revision(self) -> int:
        return self._revision

    def backlog(self) -> bool:
        return self.merge.left is not None

    async def flush(self) -> None:
        for operator in self.operators:
            await operator.flush()
        if self.on_clock is not None and self.merge.clock > self._published:
            self._published = self.merge.clock
            await self.on_clock(self.merge.clock)

    def dump(self) -> dict[str, Any]:
        return {"merge": self.merge, "operators": {op.name: op.state for op in self.operators}}

    def settled(self) -> bool:
        """Every source idle and every event applied (what ``Runtime.drained`` waits for)."""
        return self.merge.drained()


async def follow_regions(settings: Settings, snapshots: Snapshots, make_state: MakeState,
                         stop: asyncio.Event | None = None) -> None:
    """Keep a copy of every region partition's state current, for a reader that is not a worker
    (an API replica): each partition starts from its workers' last snapshot and reads on from
    there, so the copy is exactly what the workers had. No consumer group: every replica
    needs every partition."""
    stop = stop or asyncio.Event()
    topic = settings.topic(BY_REGION)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                fetch_max_wait_ms=settings.stage_fetch_max_wait_ms)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata partitions_for_topic reads
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        states = {}
        for partition in partitions:
            saved = await snapshots.load(partition)
            offset, dump = saved if saved is not None else (-1, None)
            states[partition] = make_state(partition, dump)
            tp = TopicPartition(topic, partition)
            if offset >= 0:
                consumer.seek(tp, offset + 1)
            else:
                await consumer.seek_to_beginning(tp)
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                await handle_all(states[tp.partition], [r.value for r in records])  # requests share the loop
    finally:
        await consumer.stop()
