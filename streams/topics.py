"""Topic names (the one place they are written) and their creation."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from relevo.core.settings import Settings
from relevo.streams.events import EVENT_TYPES

log = logging.getLogger(__name__)

DLQ = "events.dlq"
CATALOG = "catalog.items"
TRAIN_BATCHES = "train.batches"
MODEL_UPDATES = "model.updates"
DRIFT_ALERTS = "drift.alerts"
BY_REGION = "events.by_region"  # every valid event again, keyed by region (relevo.streams.regions)
DRIFT_GLOBAL = "drift.global"  # the region partitions' minute buckets, combined by one global stage
SINGLE_PARTITION = (DRIFT_GLOBAL,)
# catalog.items is keyed by item id and compacted: each item's latest record (or tombstone) is kept
# however old, so an API replica that starts later still reads the whole catalog.
CONFIGS = {CATALOG: {"cleanup.policy": "compact"}}


def event_topic(event_type: str, prefix: str = "") -> str:
    """The topic that carries ``event_type`` events, under the common ``prefix``."""
    return f"{prefix}events.{event_type}"


def event_topics(settings: Settings) -> dict[str, str]:
    """Each event topic's full name, mapped to the event type it carries."""
    return {event_topic(t, settings.topic_prefix): t for t in EVENT_TYPES}


def all_topics(settings: Settings) -> dict[str, int]:
    """Every topic Relevo uses, with its partition count."""
    names = [*event_topics(settings), *(settings.topic(n) for n in (DLQ, CATALOG, TRAIN_BATCHES, MODEL_UPDATES,
                                                                      DRIFT_ALERTS, BY_REGION, DRIFT_GLOBAL))]
    single = {settings.topic(n) for n in SINGLE_PARTITION}
    return {name: 1 if name in single else settings.partitions for name in names}


async def ensure_topics(settings: Settings) -> None:
    """Create every topic Relevo uses (event topics with ``settings.partitions`` partitions), each
    with ``settings.replication_factor`` replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = {settings.topic(name): config for name, config in CONFIGS.items()}
        wanted = [NewTopic(name, partitions, settings.replication_factor, topic_configs=configs.get(name, {}))
                  for name, partitions in all_topics(settings).items() if name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another process won the race
            log.info("created topics %s", ", ".join(t.name for t in wanted))
    finally:
        await admin.close()
