"""The trainer worker on Kafka: ``train.batches`` in, published versions and ``model.updates`` out.

It consumes labelled example batches from ``train.batches`` (each record a JSON
array of examples, as ``ExamplesBuilder`` emits them through ``record_emitter``),
runs ``Trainer.update`` on what arrived, announces every published version on
``model.updates`` and only then commits the offsets: a worker killed mid-update
gets the same examples again and resumes from the last published version.
Serving follows the announcements with ``relevo.streams.follow.follow_updates``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from relevo.core.settings import Settings
from relevo.models.trainer import Trainer, UpdateReport
from relevo.streams.topics import MODEL_UPDATES, TRAIN_BATCHES, ensure_topics

log = logging.getLogger(__name__)


def registry_dir(settings: Settings) -> Path:
    """Where the registry lives: ``RELEVO_REGISTRY_DIR``, else ``<data dir>/models``."""
    return Path(settings.registry_dir) if settings.registry_dir else settings.data_dir / "models"


def announcement(report: UpdateReport) -> dict[str, Any]:
    """The ``model.updates`` message for a published version."""
    assert report.published is not None
    return {**report.published.to_dict(), "prequential": report.prequential}


async def run_trainer(settings: Settings, trainer: Trainer, stop: asyncio.Event | None = None,
                      max_records: int = 64) -> None:
    """Train on ``train.batches`` until ``stop`` is set."""
    stop = stop or asyncio.Event()
    await ensure_topics(settings)
    session_ms = int(settings.session_timeout_s * 1000)
    consumer = AIOKafkaConsumer(
        settings.topic(TRAIN_BATCHES), bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.app_id}-trainer", enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=session_ms, heartbeat_interval_ms=max(500, session_ms // 3),
        max_poll_interval_ms=max(300_000, session_ms))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            records = await consumer.getmany(timeout_ms=500, max_records=max_records)
            examples = [e for batch in records.values() for r in batch for e in orjson.loads(r.value)]
            if not examples:
                continue
            report = await asyncio.to_thread(trainer.update, examples)
            log.info("update on %d examples (%d already learned, skipped): prequential %s, published %s, refused %s",
                     report.examples, report.duplicates, report.prequential,
                     report.published.version if report.published else None, report.refused)
            if report.published:
                await producer.send_and_wait(settings.topic(MODEL_UPDATES), orjson.dumps(announcement(report)))
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
