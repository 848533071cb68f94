"""Redis key construction, safe against hostile ids.

An id made only of ``[A-Za-z0-9_.-]`` is used as it is; anything else is hex
encoded behind a ``~``. So no id can contain the ``:`` that separates key parts,
and two different ids never map to the same key.

>>> k = Keys("rv")
>>> k.entity("user", "u-1", "items")
'rv:user:u-1:items'
>>> k.entity("user", "a:b*", "items")
'rv:user:~613a622a:items'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@lru_cache(maxsize=1 << 18)
def safe_id(value: str) -> str:
    """``value`` as a key part that cannot collide or break the key layout."""
    if _SAFE.match(value):
        return value
    return "~" + value.encode("utf-8").hex()


@dataclass(frozen=True)
class Keys:
    """Names of every Redis key Relevo uses, under one prefix."""

    prefix: str = "rv"

    def entity(self, entity: str, entity_id: str, feature: str) -> str:
        return f"{self.prefix}:{entity}:{safe_id(entity_id)}:{feature}"

    def seen(self, bucket: str) -> str:
        """A set of event ids applied in one time bucket."""
        return f"{self.prefix}:seen:{bucket}"

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
