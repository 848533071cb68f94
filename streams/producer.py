"""The Python producer client: events to Kafka, many events per record, partitioned by user.

The worker pays per record, not per event, so ``send`` packs the events of one
type and one partition into JSON-array records (``relevo.streams.events.decode_record``
reads them back). The partition is Kafka's default partitioner applied to the
``user_id`` (murmur2), passed explicitly, so every producer of a user's events,
in any language, keys them to the same partition and the worker sees them in
order. Topics are created with ``partitions`` partitions when missing; the
partition count the broker reports is what the hash uses.

    async with EventProducer("127.0.0.1:9092") as producer:
        await producer.send(events)

>>> partition_for("018ULPKHFF1A", 4) == partition_for("018ULPKHFF1A", 4) < 4
True
>>> [len(orjson.loads(r)) for r, _ in records([{"user_id": "u", "n": i} for i in range(5)], 2, 10**6)]
[2, 2, 1]
>>> [len(orjson.loads(r)) for r, _ in records([{"user_id": "u", "n": i} for i in range(4)], 4, 40)]
[1, 1, 1, 1]
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from types import TracebackType

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from aiokafka.structs import RecordMetadata

from relevo.streams.events import Event
from relevo.streams.topics import event_topic

log = logging.getLogger(__name__)

TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS


@lru_cache(maxsize=1 << 16)
def partition_for(user_id: str, partitions: int) -> int:
    """The partition of a user's events: what Kafka's default partitioner picks for key ``user_id``."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def records(events: Sequence[Event], batch_events: int, max_bytes: int) -> Iterator[tuple[bytes, bytes]]:
    """``(value, key)`` records of at most ``batch_events`` events and about ``max_bytes`` each."""
    for start in range(0, len(events), batch_events):
        chunk = events[start:start + batch_events]
        value = orjson.dumps(chunk)
        if len(value) > max_bytes and len(chunk) > 1:
            middle = len(chunk) // 2
            yield from records(chunk[:middle], batch_events, max_bytes)
            yield from records(chunk[middle:], batch_events, max_bytes)
        else:
            yield value, chunk[0]["user_id"].encode()


class EventProducer:
    """Writes events to their type's topic (under ``prefix``), in JSON-array records per user partition."""

    def __init__(self, bootstrap_servers: str, prefix: str = "", partitions: int = 4, batch_events: int = 200,
                 max_record_bytes: int = 900_000, replication_factor: int = 1) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.prefix = prefix
        self.partitions = partitions
        self.batch_events = batch_events
        self.max_record_bytes = max_record_bytes  # under Kafka's default 1 MiB message limit
        self.replication_factor = replication_factor
        self.sent: Counter[str] = Counter()  # events delivered, per event type
        self.records_sent = 0
        self._partition_counts: dict[str, int] = {}
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, linger_ms=5, acks="all",  # acknowledged = on every replica
            max_batch_size=1 << 20, max_request_size=1 << 20)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await self._producer.start()
        await self._admin.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._producer = self._admin = None

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def topic_for(self, event_type: str) -> str:
        return event_topic(event_type, self.prefix)

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("EventProducer is not started: use `async with` or await start()")
        return self._producer

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic``, creating it with ``self.partitions`` when it does not exist."""
        if topic not in self._partition_counts:
            assert self._admin is not None, "started with the producer"
            response = await self._admin.create_topics(
                [NewTopic(topic, self.partitions, self.replication_factor)])
            for name, code, message in response.topic_errors:
                if code not in (0, TOPIC_EXISTS):
                    raise RuntimeError(f"cannot create topic {name}: error {code} {message}")
            count = len(await self.producer.partitions_for(topic))
            if count != self.partitions:
                log.warning("topic %s has %d partitions, not %d: hashing users over %d",
                            topic, count, self.partitions, count)
            self._partition_counts[topic] = count
        return self._partition_counts[topic]

    async def send(self, events: Iterable[Event]) -> int:
        """Send ``events`` and wait until the broker has them all; returns how many were sent.

        Order is kept per user and type (one partition, records in order).
        """
        groups: dict[tuple[str, int], list[Event]] = {}
        counts: dict[str, int] = {}
        for event in events:
            topic = self.topic_for(event["type"])
            if topic not in counts:
                counts[topic] = await self.partition_count(topic)
            groups.setdefault((topic, partition_for(event["user_id"], counts[topic])), []).append(event)
        deliveries = []
        for (topic, partition), group in groups.items():
            for value, key in records(group, self.batch_events, self.max_record_bytes):
                deliveries.append(await self.producer.send(topic, value, key=key, partition=partition))
        await asyncio.gather(*deliveries)
        self.records_sent += len(deliveries)
        for group in groups.values():
            self.sent.update(event["type"] for event in group)
        return sum(len(group) for group in groups.values())

    async def send_dead_letters(self, topic: str, rejects: Sequence[tuple[bytes, str]], source: str) -> None:
        """Send ``(original bytes, reason)`` records to the dead-letter ``topic`` and wait for all of them."""
        deliveries = [await self.producer.send(topic, raw, headers=[("reason", reason.encode()),
                                                                   ("topic", source.encode())])
                      for raw, reason in rejects]
        await asyncio.gather(*deliveries)

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> RecordMetadata:
        """Send one record as is (a malformed one, in tests of the dead-letter path)."""
        return await self.producer.send_and_wait(topic, value, key=key)
