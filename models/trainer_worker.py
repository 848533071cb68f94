"""``relevo trainer``: the trainer worker on Kafka.

It consumes labelled example batches from ``train.batches`` (each record a JSON
array of examples, as ``ExamplesBuilder`` emits them through ``kafka_emitter``),
runs ``Trainer.update`` on what arrived, announces every published version on
``model.updates`` and only then commits the offsets: a worker killed mid-update
gets the same examples again and resumes from the last published version.
Serving follows the announcements with ``models.follow.follow_updates``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.catalog_cli import catalog_dir
from models.examples import Emit
from models.ranker import device as default_device
from models.registry import Registry
from models.trainer import Trainer, UpdateReport
from relevo.settings import Settings
from streams.topics import MODEL_UPDATES, TRAIN_BATCHES, ensure_topics

if TYPE_CHECKING:  # models.lora pulls in transformers and peft: only a configured tower pays for them
    from models.lora import ItemVectors

log = logging.getLogger(__name__)


def registry_dir(settings: Settings) -> Path:
    """Where the registry lives unless ``--registry`` says otherwise."""
    return Path(settings.registry_dir) if settings.registry_dir else settings.data_dir / "models"


def announcement(report: UpdateReport) -> dict[str, Any]:
    """The ``model.updates`` message for a published version."""
    assert report.published is not None
    return {**report.published.to_dict(), "prequential": report.prequential}


def kafka_emitter(producer: AIOKafkaProducer, topic: str) -> Emit:
    """The ``emit`` for ``ExamplesBuilder`` that writes each batch as one record to ``topic``."""
    async def emit(batch: list[dict[str, Any]]) -> None:
        await producer.send_and_wait(topic, orjson.dumps(batch))
    return emit


async def run_trainer(settings: Settings, registry: Registry, trainer: Trainer,
                      stop: asyncio.Event | None = None, max_records: int = 64) -> None:
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
            prepare = getattr(trainer.item_vectors, "prepare", None)  # a query tower's ItemVectors
            if prepare is not None:  # encode new catalog items outside the update
                await asyncio.to_thread(prepare, [i for e in examples for i in e["items"]])
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


def wants_query_tower(mode: str, device: str) -> bool:
    """Whether the trainer fine-tunes the E5 query tower with LoRA (``RELEVO_QUERY_TOWER``).

    ``auto`` means on a GPU: on a CPU one LoRA step through E5's 12 layers costs ~0.3 s per
    16 queries, more than a whole ranker update.

    >>> wants_query_tower("auto", "cuda"), wants_query_tower("auto", "cpu"), wants_query_tower("e5", "cpu")
    (True, False, True)
    """
    if mode not in ("auto", "e5", "off"):
        raise ValueError(f"RELEVO_QUERY_TOWER must be auto, e5 or off, got {mode!r}")
    return mode == "e5" or (mode == "auto" and device.startswith("cuda"))


def catalog_texts(settings: Settings) -> dict[str, str]:
    """Each catalog item's first title, read from the catalog the API serves (empty when none is loaded)."""
    path = catalog_dir(settings.data_dir) / "items.jsonl"
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        return {item["item_id"]: next(iter(item["titles"].values())) for item in map(orjson.loads, fh)}


def query_tower(settings: Settings, device: str) -> ItemVectors | None:
    """The LoRA query tower with its catalog item vectors, when configured and a catalog has text."""
    if not wants_query_tower(settings.query_tower, device):
        return None
    from models.e5_tower import e5_query_tower
    from models.lora import ItemVectors

    texts = catalog_texts(settings)
    if not texts:
        log.warning("no catalog under %s: the query tower has no item texts to learn against; ranker only",
                    settings.data_dir)
        return None
    log.info("fine-tuning the E5 query tower with LoRA on %s against %d catalog items", device, len(texts))
    return ItemVectors(e5_query_tower(settings.cache_dir, device=device), texts.get)


def trainer_command(args: argparse.Namespace, settings: Settings) -> int:
    torch.set_num_threads(args.threads)  # small models: extra threads only contend on a busy CPU
    registry = Registry(args.registry or registry_dir(settings))
    vectors = query_tower(settings, args.device)
    trainer = Trainer(registry, device=args.device, query_tower=vectors.tower if vectors else None,
                      item_vectors=vectors)
    log.info("trainer on %s, registry %s, serving v%s", args.device, registry.root, trainer.version)
    try:
        asyncio.run(run_trainer(settings, registry, trainer))
    except KeyboardInterrupt:
        log.info("trainer stopped")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``relevo trainer [--registry DIR] [--device cpu|cuda] [--threads N]``."""
    parser = subparsers.add_parser("trainer", help="fine-tune the ranker from train.batches and publish versions")
    parser.add_argument("--registry", type=Path, default=None,
                        help="model registry directory (default: RELEVO_DATA_DIR/models)")
    parser.add_argument("--device", default=default_device, help="torch device (cuda when present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.set_defaults(func=trainer_command)
