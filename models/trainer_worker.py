"""The trainer worker on Kafka: ``train.batches`` in, published versions and ``model.updates`` out.

It consumes labelled example batches from ``train.batches`` (each record a JSON
array of examples, as ``ExamplesBuilder`` emits them through ``record_emitter``),
runs ``Trainer.update`` on what arrived, announces every published version on
``model.updates`` and only then commits the offsets: a worker killed mid-update
gets the same examples again and resumes from the last published version.
Serving follows the announcements with ``relevo.streams.follow.follow_updates``.

A record that is not a JSON list of examples, or an example of the wrong shape, is
dead-lettered with its reason (``events.dlq``, header ``topic: train.batches``) and
skipped, so one bad record never stops learning.

>>> example_problem({"search_id": "q", "ts": 1, "items": ["a"], "features": [[0.0, 1.0]], "labels": [1]}, 2)
>>> example_problem({"search_id": "q", "ts": 1, "items": ["a"], "features": [[0.0]], "labels": [1]}, 2)
'features: expected one row of 2 numbers per item'
>>> example_problem([1, 2], 2)
'not an example object'
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
from relevo.streams.topics import DLQ, MODEL_UPDATES, TRAIN_BATCHES, ensure_topics

log = logging.getLogger(__name__)


def registry_dir(settings: Settings) -> Path:
    """Where the registry lives: ``RELEVO_REGISTRY_DIR``, else ``<data dir>/models``."""
    return Path(settings.registry_dir) if settings.registry_dir else settings.data_dir / "models"


def announcement(report: UpdateReport) -> dict[str, Any]:
    """The ``model.updates`` message for a published version."""
    assert report.published is not None
    return {**report.published.to_dict(), "prequential": report.prequential}


def example_problem(example: Any, width: int) -> str | None:
    """Why ``example`` cannot be trained on (``width`` features per item), or None."""
    if not isinstance(example, dict):
        return "not an example object"
    items, features, labels = example.get("items"), example.get("features"), example.get("labels")
    if not isinstance(example.get("search_id"), str) or type(example.get("ts")) is not int:
        return "search_id and ts: required (string, integer epoch ms)"
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        return "items: expected a non-empty list of item ids"
    if not isinstance(features, list) or len(features) != len(items) or not all(
            isinstance(row, list) and len(row) == width and all(_number(v) for v in row) for row in features):
        return f"features: expected one row of {width} numbers per item"
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(items)
                               or not all(_number(v) for v in labels)):
        return "labels: expected one number per item"
    return None


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def _examples(value: bytes, width: int) -> tuple[list[dict[str, Any]], list[tuple[bytes, str]]]:
    """The examples of one ``train.batches`` record, and what to dead-letter (bytes, reason)."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [], [(value, f"malformed JSON: {exc}")]
    if not isinstance(parsed, list):
        return [], [(value, "train.batches: a record must be a JSON list of examples")]
    good, bad = [], []
    for example in parsed:
        problem = example_problem(example, width)
        if problem is None:
            good.append(example)
        else:
            bad.append((orjson.dumps(example), f"example: {problem}"))
    return good, bad


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
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await consumer.start()
    await producer.start()

    async def dead_letter(rejects: list[tuple[bytes, str]]) -> None:
        for raw, reason in rejects:
            log.warning("dead-lettering a train.batches record: %s", reason)
            await producer.send_and_wait(settings.topic(DLQ), raw, headers=[
                ("reason", reason.encode()), ("topic", settings.topic(TRAIN_BATCHES).encode())])

    try:
        while not stop.is_set():
            records = await consumer.getmany(timeout_ms=500, max_records=max_records)
            examples, rejects = [], []
            for batch in records.values():
                for record in batch:
                    good, bad = _examples(record.value, trainer.config.features)
                    examples += good
                    rejects += bad
            await dead_letter(rejects)
            if examples:
                try:
                    report = await asyncio.to_thread(trainer.update, examples)
                except Exception as exc:  # a batch the checks let through must not crash-loop the trainer
                    log.exception("update failed on %d examples; dead-lettering their records", len(examples))
                    reason = f"processing: trainer update failed: {exc!r:.200}"
                    await dead_letter([(r.value, reason) for batch in records.values() for r in batch])
                    report = None
                if report is not None:
                    log.info("update on %d examples (%d already learned, skipped): prequential %s, published %s, "
                             "refused %s", report.examples, report.duplicates, report.prequential,
                             report.published.version if report.published else None, report.refused)
                    if report.published:
                        await producer.send_and_wait(settings.topic(MODEL_UPDATES),
                                                     orjson.dumps(announcement(report)))
            if records:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
