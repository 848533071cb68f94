"""Redis key construction, safe against hostile ids and ready for Redis Cluster.

An id made only of ``[A-Za-z0-9_.-]`` is used as it is; anything else is hex
encoded behind a ``~``. So no id can contain the ``:`` that separates key parts,
and two different ids never map to the same key. The whole id must match: a
trailing newline is encoded too (``re.match`` with ``$`` would let it through).

Every entity's keys carry a hash tag naming one of ``SHARDS`` shards (``{7}``), so
on a cluster all of an entity's keys share a slot and a writer can apply a batch
with one script call per shard; each shard keeps its own bookkeeping (dedupe
buckets, applied positions, counters) under the same tag.

>>> k = Keys("rv")
>>> k.entity("user", "u-1", "items")
'rv:{6}:user:u-1:items'
>>> k.entity("user", "a:b*", "items")
'rv:{7}:user:~613a622a:items'
>>> safe_id("u1\\n")
'~75310a'
>>> k.in_shard(4, "applied")
'rv:{4}:applied'
>>> buckets, ttl = dedupe_buckets(k.in_shard(4, "seen"), window_s=3600, now_s=7200)
>>> buckets[:2], len(buckets), ttl
(['rv:{4}:seen:b24', 'rv:{4}:seen:b23'], 13, 3900)
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEDUPE_BUCKETS = 12  # a dedupe window is covered by this many sets of event ids
SHARDS = 16  # part of every key's name: changing it moves every key
CACHED_ID_CHARS = 64  # longer ids are encoded each time: the cache's memory stays bounded


def shard_of(text: str) -> int:
    """The shard a key part belongs to (stable across processes, unlike ``hash``)."""
    return zlib.crc32(text.encode()) % SHARDS


def _encode(value: str) -> str:
    return value if _SAFE.fullmatch(value) else "~" + value.encode("utf-8").hex()


_encode_cached = lru_cache(maxsize=1 << 16)(_encode)  # at most 65,536 short ids: a few MB


def safe_id(value: str) -> str:
    """``value`` as a key part that cannot collide or break the key layout."""
    return _encode_cached(value) if len(value) <= CACHED_ID_CHARS else _encode(value)


def dedupe_buckets(base: str, window_s: int, now_s: float) -> tuple[list[str], int]:
    """The sets of applied event ids covering the last ``window_s`` (newest first, one per
    wall-clock bucket; a set per bucket, not a key per id), and the newest one's TTL."""
    size = max(1, window_s // DEDUPE_BUCKETS)
    current = int(now_s) // size
    return [f"{base}:b{current - i}" for i in range(DEDUPE_BUCKETS + 1)], window_s + size


def _part(entity: str, entity_id: str) -> tuple[str, int]:
    part = f"{entity}:{_encode(entity_id)}"
    return part, shard_of(part)


_part_cached = lru_cache(maxsize=1 << 16)(_part)  # bounded as safe_id's: an entity's features share it


@dataclass(frozen=True)
class Keys:
    """Names of every Redis key Relevo uses, under one prefix."""

    prefix: str = "rv"

    def entity(self, entity: str, entity_id: str, feature: str) -> str:
        return self.located(entity, entity_id, feature)[0]

    def located(self, entity: str, entity_id: str, feature: str) -> tuple[str, int]:
        """``entity(...)`` and its shard: what a writer groups updates by, for every update of a batch."""
        # Chosen here, not in a helper: this runs for every update a writer makes.
        part, shard = (_part_cached if len(entity_id) <= CACHED_ID_CHARS else _part)(entity, entity_id)
        return f"{self.prefix}:{{{shard}}}:{part}:{feature}", shard

    def in_shard(self, shard: int, name: str) -> str:
        """A shard's own bookkeeping key (same slot as the shard's entities)."""
        return f"{self.prefix}:{{{shard}}}:{name}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def workers(self) -> str:
        """Hash of worker id → when it last finished joining the consumer group."""
        return f"{self.prefix}:workers"

    def stage_state(self, stage: str, partition: int) -> str:
        """The snapshot of one partition of a stage (``regions``, ``global``)."""
        return f"{self.prefix}:stage:{{{stage}:{partition}}}"

    def search_analytics(self, partition: int) -> str:
        """The search analytics of one region partition: region -> summary (``relevo.search.analytics``).

        >>> Keys("rv").search_analytics(3)
        'rv:analytics:{analytics:3}'
        """
        return f"{self.prefix}:analytics:{{analytics:{partition}}}"

    @property
    def log_epoch(self) -> str:
        """The incarnation of the broker's log that positions refer to (``relevo.streams.epoch``)."""
        return f"{self.prefix}:log_epoch"

    @property
    def clock(self) -> str:
        """The stream clock: the latest event time applied, in epoch ms."""
        return f"{self.prefix}:clock"
