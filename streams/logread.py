"""Reading a topic's log once, from its start to where it ended when the read began.

For the commands that go over history rather than follow it: the dead-letter
listing and re-drive (``relevo.streams.dlq``) and the rebuild of features from the
event topics (``relevo.features.rebuild``). No consumer group: nothing is committed,
and running the read twice reads the same records.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from relevo.core.settings import Settings

log = logging.getLogger(__name__)


async def read_log(settings: Settings, topics: Sequence[str], max_records: int = 2000,
                   idle_polls: int = 10) -> AsyncIterator[list[ConsumerRecord]]:
    """Batches of the records of ``topics``, partition by partition in offset order, up to the end
    offsets taken at the start; stops early (with a warning) after ``idle_polls`` empty seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # the cluster metadata partitions_for_topic reads
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts, ends = await consumer.beginning_offsets(partitions), await consumer.end_offsets(partitions)
        left = [tp for tp in partitions if ends[tp] > starts[tp]]
        idle = 0
        while left:
            polled = await consumer.getmany(*left, timeout_ms=1000, max_records=max_records)
            idle = 0 if polled else idle + 1
            if idle >= idle_polls:
                log.warning("no records for %d s before the end of %s; stopping there", idle, left)
                return
            for tp, records in polled.items():
                batch = [r for r in records if r.offset < ends[tp]]
                if batch:
                    yield batch
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.remove(tp)
    finally:
        await consumer.stop()
