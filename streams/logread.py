"""Reading a topic's log once, from its start to (at least) where it ended when the read began.

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
    """Batches of the records of ``topics``, partition by partition in offset order, until every
    partition has passed the end offset taken at the start and a further poll finds nothing.

    The extra poll matters: the embedded Tansu reports a high watermark of the last record
    batch's base offset + 1, so the rest of that batch lies past the end it reports.
    Stops early (with a warning) after ``idle_polls`` empty seconds short of the end.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # the cluster metadata partitions_for_topic reads
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not partitions:
            return
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        short = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        idle = 0
        while True:
            polled = await consumer.getmany(timeout_ms=1000 if short else 300, max_records=max_records)
            if not polled and not short:
                return  # past every end, and nothing more
            idle = 0 if polled else idle + 1
            if idle >= idle_polls:
                log.warning("no records for %d s before the end of %s; stopping there", idle, sorted(short))
                return
            for tp, records in polled.items():
                if records:
                    yield records
                    if records[-1].offset + 1 >= ends[tp]:
                        short.discard(tp)
    finally:
        await consumer.stop()
