"""The producer client against a real broker: records hold event arrays, one partition per user."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from relevo.streams.events import decode_record
from relevo.streams.producer import EventProducer, partition_for

PARTITIONS = 4


def click(n: int, user: str) -> dict:
    return {"type": "click", "event_id": f"e{n}", "ts": 1541599523000 + n, "user_id": user,
            "session_id": f"s-{user}", "region": "FR", "locale": "fr-FR", "device": "mobile",
            "item_id": str(n % 7), "kind": "click"}


def search(n: int, user: str) -> dict:
    return {"type": "search", "event_id": f"q{n}", "ts": 1541599523000 + n, "user_id": user,
            "session_id": f"s-{user}", "region": "DE", "locale": "de-DE", "device": "desktop",
            "search_id": f"q{n}", "query": "berlin", "results": ["1", "2", "3"]}


async def consume(bootstrap: str, topic: str) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` of every record of ``topic`` (all were delivered before the call)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        found: list[tuple[int, bytes, bytes]] = []
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=200)
            if found and not batches:
                break
            found += [(m.partition, m.key, m.value) for ms in batches.values() for m in ms]
        return found
    finally:
        await consumer.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[EventProducer]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    async with EventProducer(kafka_bootstrap, prefix, partitions=PARTITIONS, batch_events=50) as producer:
        yield producer


async def test_events_round_trip_in_arrays_partitioned_by_user(producer: EventProducer,
                                                               kafka_bootstrap: str) -> None:
    users = [f"user-{u}" for u in range(10)]
    events = [click(n, users[n % 10]) for n in range(300)] + [search(n, users[n % 3]) for n in range(30)]

    assert await producer.send(events) == 330
    assert producer.sent == {"click": 300, "search": 30}

    received = await consume(kafka_bootstrap, producer.topic_for("click"))
    assert len(received) < 300 // 10  # many events per record
    decoded = []
    for partition, key, value in received:
        batch, rejects = decode_record(value, "click")
        assert not rejects and len(batch) <= 50
        assert {partition_for(e["user_id"], PARTITIONS) for e in batch} == {partition}
        assert partition_for(key.decode(), PARTITIONS) == partition
        decoded += batch
    assert sorted(e["event_id"] for e in decoded) == sorted(e["event_id"] for e in events[:300])
    for user in users:  # each user's events arrive in the order they were sent
        mine = [e["ts"] for e in decoded if e["user_id"] == user]
        assert mine == sorted(mine)


async def test_send_raw_writes_bytes_as_given(producer: EventProducer, kafka_bootstrap: str) -> None:
    topic = producer.topic_for("click")
    await producer.partition_count(topic)
    await producer.send_raw(topic, b"{not json", key=b"k")

    [(_, key, value)] = await consume(kafka_bootstrap, topic)
    assert (key, value) == (b"k", b"{not json")
    assert decode_record(value, "click")[1][0].reason.startswith("malformed JSON")


async def test_oversized_groups_split_into_smaller_records(kafka_bootstrap: str) -> None:
    async with EventProducer(kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}.", max_record_bytes=2000) as producer:
        await producer.send([search(n, "one-user") for n in range(40)])
        assert producer.records_sent > 1
        topic = producer.topic_for("search")

    received = await consume(kafka_bootstrap, topic)
    assert all(len(value) <= 2000 for _, _, value in received)
    assert sum(len(decode_record(value)[0]) for _, _, value in received) == 40


async def test_unstarted_producer_says_how_to_start() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await EventProducer("127.0.0.1:1").send_raw("t", b"x")
