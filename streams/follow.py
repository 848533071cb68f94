"""Followers of topics: keep one process's copy of something current from Kafka.

None uses a consumer group: every serving replica needs every message. Each is
told what to do with what it reads, so the stream side knows nothing of models or
search: ``follow_updates`` calls ``refresh`` when ``model.updates`` announces a
version; ``follow_catalog`` passes ``catalog.items`` to an ``ItemsConsumer``;
``follow_dead_letters`` hands every dead letter to the console. (The region stream has
its own follower, ``relevo.streams.regions.follow_regions``.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Protocol

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from relevo.core.settings import Settings
from relevo.streams.dlq import DeadLetter
from relevo.streams.topics import CATALOG, DLQ, MODEL_UPDATES

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


async def follow_catalog(consumer_of_items: ItemsConsumer, settings: Settings,
                         dead_letter: Callable[[bytes, str], Awaitable[None]],
                         stop: asyncio.Event | None = None) -> None:
    """Upsert every item announced on ``catalog.items`` into this replica's index; rejects go to the DLQ."""
    stop = stop or asyncio.Event()
    async with aclosing(_from_start(settings, CATALOG, stop)) as batches:
        try:
            async for records in batches:
                items: list[object] = []
                for record in records:
                    try:
                        parsed = orjson.loads(record.value)
                    except orjson.JSONDecodeError as exc:
                        await dead_letter(record.value, f"malformed JSON: {exc}")
                        continue
                    items += parsed if isinstance(parsed, list) else [parsed]
                # The consumer encodes new titles and upserts in a thread, under the catalog's lock.
                rejected = await consumer_of_items.process(items)
                for raw, reason in rejected:
                    await dead_letter(orjson.dumps(raw), f"catalog item: {reason}")
        finally:
            await consumer_of_items.close()


async def follow_dead_letters(settings: Settings, add: Callable[[DeadLetter], None],
                              stop: asyncio.Event | None = None) -> None:
    """Call ``add`` with every dead letter, from the start of the topic on, until ``stop``."""
    async with aclosing(_from_start(settings, DLQ, stop or asyncio.Event())) as batches:
        async for records in batches:
            for record in records:
                add(DeadLetter.of(record))


async def _from_start(settings: Settings, topic: str, stop: asyncio.Event) -> AsyncIterator[list[ConsumerRecord]]:
    """``topic``'s records in batches, from its start on (no group: every replica reads all), until ``stop``."""
    consumer = AIOKafkaConsumer(settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=500, max_records=2000)).values():
                yield records
    finally:
        await consumer.stop()

