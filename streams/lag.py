"""Consumer lag of the worker group: how many records wait on each event topic."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from relevo.core.settings import Settings
from relevo.streams.topics import event_topics


async def consumer_lag(settings: Settings) -> dict[str, int]:
    """Records produced but not yet committed by the worker group, per event topic."""
    topics = list(event_topics(settings))
    # A consumer that never subscribes does not join the group: it only reads the group's offsets.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends = await consumer.end_offsets(partitions)
        lag = dict.fromkeys(topics, 0)
        for tp, end in ends.items():
            lag[tp.topic] += max(0, end - (await consumer.committed(tp) or 0))
    finally:
        await consumer.stop()
    return lag
