"""The Faust app: its topics and its one agent, top to bottom.

Every event topic feeds one agent, which takes records in batches (Faust's
per-record cost is what limits a worker, so the work is done per batch) and
hands them to the ``EventPipeline``. Scale out with partitions and worker
processes; every update is idempotent, so at-least-once delivery is enough.
What the pipeline runs is the caller's choice (``build_processors``; the
worker's table is ``relevo.runtime.worker``): the stream side knows no processor.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

import faust
import redis.asyncio as aioredis
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.core.stats import WorkerStats
from relevo.streams.pipeline import EventPipeline, Record
from relevo.streams.processors import BatchProcessor, Send
from relevo.streams.topics import DLQ, DRIFT_ALERTS, TRAIN_BATCHES, event_topics

log = logging.getLogger(__name__)

# Given the worker's Redis client and a sender per output topic, the processors to run.
BuildProcessors = Callable[[aioredis.Redis, dict[str, Send]], list[BatchProcessor]]


def _fetch_max_wait(ms: int) -> None:
    """Make Faust's consumer fetch with ``ms`` of maximum wait.

    faust-streaming 0.15 hard-codes ``fetch_max_wait_ms=1500``. A broker that holds a
    fetch for the whole wait when little data is there (the embedded Tansu does)
    then adds up to 1.5 s to every event's freshness; measured with raw aiokafka on
    Tansu, produce → consume p50 fell from 135 ms at 500 ms of wait to 18 ms at 20 ms.
    """
    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "fetch_max_wait_ms", None) == ms:
        return

    def create_with_wait(self: AIOKafkaConsumerThread, transport: object) -> object:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = ms  # read when the consumer starts its fetcher
        return consumer
    create_with_wait.fetch_max_wait_ms = ms  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_with_wait  # type: ignore[method-assign]


def create_app(settings: Settings, build_processors: BuildProcessors) -> faust.App:
    _fetch_max_wait(settings.fetch_max_wait_ms)
    faust_dir = settings.data_dir / "faust" / settings.app_id
    faust_dir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        datadir=str(faust_dir),  # not "<app id>-data" in the working directory
        web_enabled=False,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 3),
        stream_wait_empty=False,
    )
    topic_types = event_topics(settings)
    events = app.topic(*topic_types, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.topic(DLQ), key_serializer="raw", value_serializer="raw")
    outputs = {name: app.topic(settings.topic(name), key_serializer="raw", value_serializer="raw")
               for name in (DRIFT_ALERTS, TRAIN_BATCHES)}

    redis = aioredis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    worker_id = f"{socket.gethostname()}-{os.getpid()}"

    @app.on_rebalance_complete.connect
    async def mark_ready(app: faust.App, **kwargs: object) -> None:
        # The demo and the benchmarks wait for this before they measure freshness.
        await redis.hset(keys.workers, worker_id, int(time.time() * 1000))

    async def send_dlq(value: bytes, headers: dict[str, str]) -> None:
        await dead_letters.send(value=value, headers={k: v.encode() for k, v in headers.items()})

    @app.agent(events)
    async def process_events(stream: faust.Stream) -> None:
        send = {name: _sender(topic) for name, topic in outputs.items()}
        processors = build_processors(redis, send)
        pipeline = EventPipeline(processors, send_dlq, WorkerStats(redis, keys), topic_types,
                                 settings.max_event_bytes)
        log.info("worker ready: %s -> %s", ", ".join(topic_types), ", ".join(p.name for p in processors))
        try:
            async for batch in stream.take_events(settings.worker_batch, within=settings.worker_batch_wait_s):
                await pipeline.handle([_record(event) for event in batch])
        finally:
            await pipeline.close()

    return app


def _sender(topic: faust.TopicT) -> Send:
    async def send(value: bytes) -> None:
        await topic.send(value=value)
    return send


def _record(event: faust.EventT) -> Record:
    message = event.message
    ts = message.timestamp
    return Record(message.topic, event.value, int(ts * 1000) if ts else None, message.partition,
                  message.offset)

