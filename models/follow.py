"""Followers: keep one replica's model and ranking context current from Kafka.

Neither uses a consumer group: every serving replica needs every message.
``follow_updates`` reloads the ``LiveModel`` when ``model.updates`` announces a
version (``LiveModel.watch`` polls the registry instead, where Kafka is not
reachable). ``follow_events`` feeds the event topics into a ``ContextState``,
so serving computes a search's features exactly as the examples builder did.
``follow_catalog`` upserts ``catalog.items`` into the replica's search index.
``committed_history`` gives a restarted worker's examples builder what it had.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from models.catalog_cli import CatalogConsumer
from models.context import ContextState
from models.live import LiveModel
from relevo.settings import Settings
from streams.events import Event, decode_record
from streams.topics import CATALOG, MODEL_UPDATES, event_topics

log = logging.getLogger(__name__)


async def follow_updates(live: LiveModel, settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Reload ``live`` whenever a version is announced, until ``stop`` is set."""
    stop = stop or asyncio.Event()
    consumer = AIOKafkaConsumer(settings.topic(MODEL_UPDATES), bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    try:
        await asyncio.to_thread(live.refresh)
        while not stop.is_set():
            if await consumer.getmany(timeout_ms=500):
                await asyncio.to_thread(live.refresh)
    finally:
        await consumer.stop()


async def follow_events(state: ContextState, settings: Settings, stop: asyncio.Event | None = None,
                        since_ms: int | None = None) -> None:
    """Apply every valid search, click and purchase to ``state``, in event-time order per poll.

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
                state.observe(event)
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


async def follow_catalog(consumer_of_items: CatalogConsumer, settings: Settings,
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

