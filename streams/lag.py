"""Consumer lag of the worker group: how many records wait on each event topic."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from relevo.settings import Settings
from streams.events import EVENT_TYPES
from streams.topics import event_topic


async def consumer_lag(settings: Settings) -> dict[str, int]:
    """Records produced but not yet committed by the worker group, per event topic."""
    topics = [settings.topic(event_topic(t)) for t in EVENT_TYPES]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id)
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(t, p) for t in topics
                          for p in consumer.partitions_for_topic(t) or ()]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
        await admin.close()
    lag = dict.fromkeys(topics, 0)
    for tp, end in ends.items():
        done = committed.get(tp)
        lag[tp.topic] += max(0, end - (done.offset if done and done.offset >= 0 else 0))
    return lag
