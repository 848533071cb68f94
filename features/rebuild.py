"""Rebuild the online features from the log: every event topic from its start, into Redis.

For a Redis that lost its data (or features built by a buggy version): the event
topics are read from the beginning to where they end now (``relevo.streams.logread``),
validated with the contract, marked with the read position the worker's pipeline
gives them, and applied through the same ``FeatureWriter`` the worker uses, so the
result is what the worker would have written. Running workers may go on meanwhile:
the writer claims each event id for its read position, so an event both apply
counts once. Features exist only for what the log still holds: keep the event
topics' retention at least as long as the longest feature TTL.

``fresh=True`` first deletes this prefix's features, decay landmarks and the writer's
per-shard bookkeeping (claimed ids, applied positions, latest time, counts); nothing
else: suggestions, drift and region state, the stream clock and worker statistics stay;
without it the rebuild refuses to run over existing features, which it would count twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from relevo.core.keys import SHARDS, Keys
from relevo.core.redis import AnyRedis
from relevo.core.settings import Settings
from relevo.features.definitions import FEATURES
from relevo.features.writer import FeatureWriter
from relevo.streams.epoch import log_offset
from relevo.streams.events import decode_record
from relevo.streams.eventtime import stamp
from relevo.streams.logread import read_log
from relevo.streams.topics import event_topics

log = logging.getLogger(__name__)
ENTITIES = sorted({f.entity for f in FEATURES})


class FeaturesExist(RuntimeError):
    """The prefix already holds features: a rebuild over them would count events twice."""


@dataclass
class RebuildReport:
    records: int = 0
    events: int = 0
    rejected: int = 0  # invalid events: the worker dead-lettered them, the rebuild skips them
    seconds: float = 0.0


def feature_patterns(keys: Keys) -> list[str]:
    """Every key the features processor writes, as SCAN patterns.

    >>> feature_patterns(Keys("rv"))[:2], feature_patterns(Keys("rv"))[-2:]
    (['rv:{*}:item:*', 'rv:{*}:region:*'], ['rv:{15}:latest', 'rv:{15}:counts'])
    """
    bookkeeping = [keys.in_shard(shard, name) for shard in range(SHARDS)
                   for name in ("seen:*", "applied", "latest", "counts")]
    return [*(f"{keys.prefix}:{{*}}:{entity}:*" for entity in ENTITIES), *bookkeeping]


async def _existing(redis: AnyRedis, keys: Keys) -> bool:
    for pattern in feature_patterns(keys)[:len(ENTITIES)]:
        async for _ in redis.scan_iter(match=pattern, count=1000):
            return True
    return False


async def clear_features(redis: AnyRedis, keys: Keys) -> int:
    """Delete this prefix's features, landmarks and the writer's bookkeeping; returns how many keys."""
    deleted = 0
    for pattern in feature_patterns(keys):
        found = [key async for key in redis.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(found), 1000):
            async with redis.pipeline(transaction=False) as pipe:  # one key per command: fine on a cluster
                for key in found[start:start + 1000]:
                    pipe.unlink(key)
                deleted += sum(await pipe.execute())
    return deleted


async def rebuild_features(settings: Settings, redis: AnyRedis, fresh: bool = False,
                           progress_every_s: float = 5.0) -> RebuildReport:
    """Replay every event topic from its start through the feature writer into ``redis``."""
    keys = Keys(settings.key_prefix)
    if fresh:
        log.info("deleted %d feature keys under %s", await clear_features(redis, keys), keys.prefix)
    elif await _existing(redis, keys):
        raise FeaturesExist(f"features exist under the prefix {keys.prefix!r}; pass --fresh to delete them "
                            "and rebuild from the log")
    writer, types = FeatureWriter(redis, keys, settings.dedupe_window_s), event_topics(settings)
    report, started = RebuildReport(), time.monotonic()
    shown = started
    async for records in read_log(settings, list(types)):
        events = []
        for record in records:
            valid, rejects = decode_record(record.value, types[record.topic], settings.max_event_bytes)
            # positioned as the worker's pipeline does
            events += stamp(valid, record.topic, record.partition, log_offset(settings.log_epoch, record.offset))
            report.rejected += len(rejects)
        await writer.process(events)
        report.records += len(records)
        report.events += len(events)
        if time.monotonic() - shown >= progress_every_s:
            shown = time.monotonic()
            log.info("rebuilding: %d events from %d records so far", report.events, report.records)
    report.seconds = time.monotonic() - started
    return report
