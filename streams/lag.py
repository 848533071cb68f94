"""Where the worker group stands in the event topics: its lag, and where each partition resumes."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from relevo.core.settings import Settings
from relevo.streams.eventtime import source_of
from relevo.streams.topics import event_topics


async def group_positions(settings: Settings) -> dict[str, tuple[int, int]]:
    """Each event partition (``topic:partition``): the offset the worker group reads next
    (its committed offset, else the start of the log) and the offset the next record gets."""
    topics = list(event_topics(settings))
    # A consumer that never subscribes does not join the group: it only reads the group's offsets.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        return {source_of(tp.topic, tp.partition): ((await consumer.committed(tp)) or starts[tp], ends[tp])
                for tp in partitions}
    finally:
        await consumer.stop()


async def consumer_lag(settings: Settings) -> dict[str, int]:
    """Records produced but not yet committed by the worker group, per event topic."""
    lag = dict.fromkeys(event_topics(settings), 0)
    for source, (following, end) in (await group_positions(settings)).items():
        lag[source.rpartition(":")[0]] += max(0, end - following)
    return lag


async def end_offset(settings: Settings, topic: str, partition: int = 0) -> int:
    """The offset the next record of ``topic``'s ``partition`` will get."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
