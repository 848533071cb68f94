"""Followers of topics: keep one process's copy of something current from Kafka.

None uses a consumer group: every serving replica needs every message. Each is
told what to do with what it reads, so the stream side knows nothing of models,
features or search: ``follow_updates`` calls ``refresh`` when ``model.updates``
announces a version; ``follow_events`` hands every valid event, in event-time
order per poll, to ``observe``; ``follow_catalog`` passes ``catalog.items`` to an
``ItemsConsumer``. ``committed_history`` gives a restarted worker what its group
had already committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from relevo.core.settings import Settings
from relevo.streams.events import Event, decode_record
from relevo.streams.topics import CATALOG, MODEL_UPDATES, event_topics

log = logging.getLogger(__name__)


class ItemsConsumer(Protocol):
    """What ``follow_catalog`` feeds: batches of raw catalog items."""

    async def process(self, items: Sequence[object]) -> list[tuple[object, str]]:
        """Take a batch; return the items rejected, with their reasons."""

    async def close(self) -> None:
        """Persist what was taken."""


async def follow_updates(refresh: Callable[[], object], settings: Settings,
                         stop: asyncio.Event | None = None) -> None:
    """Call ``refresh`` (in a thread) at start and whenever a version is announced, until ``stop``."""
    stop = stop or asyncio.Event()
    consumer = AIOKafkaConsumer(settings.topic(MODEL_UPDATES), bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    try:
        await asyncio.to_thread(refresh)
        while not stop.is_set():
            if await consumer.getmany(timeout_ms=500):
                await asyncio.to_thread(refresh)
    finally:
        await consumer.stop()


async def follow_events(observe: Callable[[Event], None], settings: Settings, stop: asyncio.Event | None = None,
                        since_ms: int | None = None) -> None:
    """Hand every valid search, click and purchase to ``observe``, in event-time order per poll.

    Starts at the records produced since ``since_ms`` (epoch ms; 0: the whole log), else at the
    end of the topics. A restarted replica replays recent history so sessions keep their context.
    """
    stop = stop or asyncio.Event()
    types = event_topics(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await _assign_since(consumer, list(types), since_ms)
        while not stop.is_set():
            polled = await consumer.getmany(timeout_ms=500)
            # Older records are skipped as well as sought past: some brokers (Tansu) answer a
            # lookup by time with the start of the log. The worker sends rejects to the DLQ.
            events = [e for tp, records in polled.items() for r in records if r.timestamp >= (since_ms or 0)
                      for e in decode_record(r.value, types[tp.topic])[0]]
            for event in sorted(events, key=lambda e: e["ts"]):
                observe(event)
    finally:
        await consumer.stop()


async def committed_history(settings: Settings, since_ms: int, max_events: int = 500_000) -> list[Event]:
    """The valid events the worker group already committed, produced since ``since_ms``.

    A restarted worker resumes after its group's last commit; without these its examples
    builder would compute the next searches' features as if their sessions had just begun.
    Reads up to the committed offsets exactly (what comes after is about to be redelivered);
    keeps the newest ``max_events``.
    """
    types = event_topics(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.app_id,
                                enable_auto_commit=False)  # never subscribes: reads the group's offsets only
    await consumer.start()
    try:
        await _assign_since(consumer, list(types), since_ms)
        until = {tp: await consumer.committed(tp) or 0 for tp in consumer.assignment()}
        events: deque[Event] = deque(maxlen=max_events)
        for tp, end in until.items():
            if await consumer.position(tp) >= end:
                consumer.pause(tp)
        while active := [tp for tp in until if tp not in consumer.paused()]:
            polled = await consumer.getmany(*active, timeout_ms=1000)
            for tp, records in polled.items():
                for record in records:
                    if record.offset < until[tp] and record.timestamp >= since_ms:
                        events.extend(decode_record(record.value, types[tp.topic])[0])
                if records and records[-1].offset + 1 >= until[tp]:
                    consumer.pause(tp)
            if not polled:  # the committed offset lies past what the broker returns: stop waiting
                break
    finally:
        await consumer.stop()
    return list(events)


async def _assign_since(consumer: AIOKafkaConsumer, topics: list[str], since_ms: int | None) -> None:
    """Assign every partition of ``topics`` and seek to the first record at or after ``since_ms``."""
    await consumer.topics()  # fetches the cluster metadata partitions_for_topic reads
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(partitions)
    if since_ms is None:
        await consumer.seek_to_end(*partitions)
        return
    try:
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    except KafkaError as exc:  # a broker without timestamp lookups: history is lost, not the follower
        log.warning("cannot look up offsets by time (%s); following from the end", exc)
        found = {}
    for partition in partitions:
        if found.get(partition) is not None:
            consumer.seek(partition, found[partition].offset)
        else:  # nothing that recent: only new records
            await consumer.seek_to_end(partition)


async def follow_catalog(consumer_of_items: ItemsConsumer, settings: Settings,
                         dead_letter: Callable[[bytes, str], Awaitable[None]],
                         stop: asyncio.Event | None = None) -> None:
    """Upsert every item announced on ``catalog.items`` into this replica's index; rejects go to the DLQ."""
    stop = stop or asyncio.Event()
    consumer = AIOKafkaConsumer(settings.topic(CATALOG), bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                items: list[object] = []
                for record in records:
                    try:
                        parsed = orjson.loads(record.value)
                    except orjson.JSONDecodeError as exc:
                        await dead_letter(record.value, f"malformed JSON: {exc}")
                        continue
                    items += parsed if isinstance(parsed, list) else [parsed]
                # Upserts run on the serving thread (the index is not thread-safe): a large
                # catalog update pauses this replica's searches while new titles are encoded.
                rejected = await consumer_of_items.process(items)
                for raw, reason in rejected:
                    await dead_letter(orjson.dumps(raw), f"catalog item: {reason}")
    finally:
        await consumer.stop()
        await consumer_of_items.close()

