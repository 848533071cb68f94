"""Serving-side followers: keep one replica's model and ranking context current from Kafka.

Neither uses a consumer group: every serving replica needs every message.
``follow_updates`` reloads the ``LiveModel`` when ``model.updates`` announces a
version (``LiveModel.watch`` polls the registry instead, where Kafka is not
reachable). ``follow_events`` feeds the event topics into a ``ContextState``,
so serving computes a search's features exactly as the examples builder did.
``follow_catalog`` upserts ``catalog.items`` into the replica's search index.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiokafka import AIOKafkaConsumer

from models.catalog_cli import CatalogConsumer
from models.context import ContextState
from models.live import LiveModel
from relevo.settings import Settings
from streams.events import EVENT_TYPES, decode_record
from streams.topics import CATALOG, MODEL_UPDATES, event_topic

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
                        from_beginning: bool = False) -> None:
    """Apply every valid search, click and purchase to ``state``, in event-time order per poll."""
    stop = stop or asyncio.Event()
    types = {settings.topic(event_topic(t)): t for t in EVENT_TYPES}
    consumer = AIOKafkaConsumer(*types, bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        while not stop.is_set():
            polled = await consumer.getmany(timeout_ms=500)
            events = [e for tp, records in polled.items() for r in records
                      for e in decode_record(r.value, types[tp.topic])[0]]  # the worker sends rejects to the DLQ
            for event in sorted(events, key=lambda e: e["ts"]):
                state.observe(event)
    finally:
        await consumer.stop()


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

