"""What the worker does with a batch of Kafka records, testable without Kafka.

Decode and validate every record; send what fails to the dead-letter topic with
its original bytes and the reason; hand the valid events to every processor at
once: each keeps its own state, so their round trips to Redis and the broker
overlap and a batch takes as long as its slowest processor, not their sum. Each
event carries its source (topic:partition) and position (offset, counted across the
log's epochs as ``relevo.streams.epoch`` says, and index in the record), and once
every processor is done with a batch the ``SourceProgress`` hears of its records and
events, so event-time operators downstream know where each source stands (never
ahead of what was forwarded).
Input can never crash the worker. When Redis is unreachable the batch is
retried until it lands: acknowledging it would lose events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from relevo.core.redis import retrying
from relevo.core.stats import WorkerStats
from relevo.streams.epoch import log_offset
from relevo.streams.events import Event, Reject, decode_record, encode
from relevo.streams.eventtime import SOURCE, SourceProgress, source_of, stamp
from relevo.streams.processors import BatchProcessor

log = logging.getLogger(__name__)

SendDLQ = Callable[[bytes, dict[str, str]], Awaitable[None]]


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the pipeline uses."""

    topic: str
    value: bytes
    timestamp_ms: int | None = None
    partition: int = -1
    offset: int = -1


class EventPipeline:
    """Validate, dead-letter, process: one batch of records at a time."""

    def __init__(self, processors: Sequence[BatchProcessor], send_dlq: SendDLQ, stats: WorkerStats,
                 topic_types: dict[str, str], max_event_bytes: int = 64 * 1024,
                 max_retry_wait_s: float = 5.0, progress: SourceProgress | None = None, epoch: int = 0) -> None:
        self.processors, self.send_dlq, self.stats = list(processors), send_dlq, stats
        self.topic_types, self.max_event_bytes = topic_types, max_event_bytes
        self._topic_of = {event_type: topic for topic, event_type in topic_types.items()}
        self.max_retry_wait_s = max_retry_wait_s
        self.progress, self.epoch = progress, epoch

    async def handle(self, records: Sequence[Record]) -> list[Event]:
        events: list[Event] = []
        per_topic: Counter[str] = Counter()
        reasons: list[str] = []
        for record in records:
            valid, rejects = decode_record(record.value, self.topic_types.get(record.topic),
                                           self.max_event_bytes)
            events.extend(stamp(valid, record.topic, record.partition, log_offset(self.epoch, record.offset)))
            per_topic[record.topic] += len(valid)
            for reject in rejects:
                await self._dead_letter(reject, record)
                reasons.append(reject.reason)
        seconds: dict[str, float] = {}  # each processor's time on this batch, retries included
        await asyncio.gather(*(self._timed(processor, events, seconds) for processor in self.processors))
        if self.progress is not None:  # only now: what the sources report must already be forwarded
            for record in records:
                self.progress.record(source_of(record.topic, record.partition), record.offset)
            for event in events:
                self.progress.event(event[SOURCE], event["ts"])
        # Lists, not generators: a retried call must see the same inputs again.
        topics, produced = [r.topic for r in records], [r.timestamp_ms for r in records]
        await self._retrying(lambda: self.stats.record(topics, per_topic, reasons, produced, seconds))
        return events

    async def _dead_letter(self, reject: Reject, record: Record) -> None:
        await self.send_dlq(reject.raw, {"reason": reject.reason, "topic": record.topic,
                                         "partition": str(record.partition), "offset": str(record.offset)})

    async def _timed(self, processor: BatchProcessor, events: list[Event], seconds: dict[str, float]) -> None:
        started = time.perf_counter()
        await self._run(processor, events)
        seconds[processor.name] = time.perf_counter() - started

    async def _run(self, processor: BatchProcessor, events: list[Event]) -> None:
        try:
            await self._retrying(lambda: processor.process(events))
        except Exception as exc:  # a bug on some input must not stop the stream or lose the events
            log.exception("processor %s failed on a batch of %d events", processor.name, len(events))
            reason = f"processing: {processor.name} failed: {exc!r:.200}"
            for event in events:
                await self.send_dlq(encode(event), {"reason": reason, "topic": self._topic_of[event["type"]]})

    async def _retrying(self, call: Callable[[], Awaitable[None]]) -> None:
        await retrying(call, self.max_retry_wait_s)

    async def tick(self) -> None:
        """Every second, batches or not: processors that report on time (the region stream's marks)."""
        for processor in self.processors:
            await self._retrying(processor.tick)

    async def close(self) -> None:
        for processor in self.processors:
            await processor.close()

