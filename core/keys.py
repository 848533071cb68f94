"""Redis key construction, safe against hostile ids, and the dedupe buckets of event ids.

An id made only of ``[A-Za-z0-9_.-]`` is used as it is; anything else is hex
encoded behind a ``~``. So no id can contain the ``:`` that separates key parts,
and two different ids never map to the same key.

>>> k = Keys("rv")
>>> k.entity("user", "u-1", "items")
'rv:user:u-1:items'
>>> k.entity("user", "a:b*", "items")
'rv:user:~613a622a:items'
>>> buckets, ttl = dedupe_buckets("rv:seen", window_s=3600, now_s=7200)
>>> buckets[:2], len(buckets), ttl
(['rv:seen:b24', 'rv:seen:b23'], 13, 3900)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEDUPE_BUCKETS = 12  # a dedupe window is covered by this many sets of event ids


@lru_cache(maxsize=1 << 18)
def safe_id(value: str) -> str:
    """``value`` as a key part that cannot collide or break the key layout."""
    if _SAFE.match(value):
        return value
    return "~" + value.encode("utf-8").hex()


def dedupe_buckets(base: str, window_s: int, now_s: float) -> tuple[list[str], int]:
    """The sets of applied event ids covering the last ``window_s`` (newest first, one per
    wall-clock bucket; a set per bucket, not a key per id), and the newest one's TTL."""
    size = max(1, window_s // DEDUPE_BUCKETS)
    current = int(now_s) // size
    return [f"{base}:b{current - i}" for i in range(DEDUPE_BUCKETS + 1)], window_s + size


@dataclass(frozen=True)
class Keys:
    """Names of every Redis key Relevo uses, under one prefix."""

    prefix: str = "rv"

    def entity(self, entity: str, entity_id: str, feature: str) -> str:
        return f"{self.prefix}:{entity}:{safe_id(entity_id)}:{feature}"

    @property
    def seen(self) -> str:
        """The base name of the feature writer's dedupe buckets."""
        return f"{self.prefix}:seen"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def workers(self) -> str:
        """Hash of worker id → when it last finished joining the consumer group."""
        return f"{self.prefix}:workers"

    @property
    def clock(self) -> str:
        """The stream clock: the latest event time applied, in epoch ms."""
        return f"{self.prefix}:clock"
