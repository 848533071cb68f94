"""A batch of feature updates, aggregated before it reaches Redis.

Many events of a batch touch the same keys (a region's activity, a popular
item's counters), so the batch sends each (key, member) once. Decayed weights
are summed relative to the batch's latest event time ``t_ref``:
``sum(w * 2 ** ((t - t_ref) / half_life))``; the Lua script rescales that to the
key's landmark, which is the same sum as applying each event on its own.

>>> from relevo.features.definitions import REGION_ACTIVITY, ITEM_COUNTS
>>> b = BatchUpdate()
>>> b.decayed(REGION_ACTIVITY, "FR", "searches", 1.0, 0)
>>> b.decayed(REGION_ACTIVITY, "FR", "searches", 1.0, 86_400_000)  # one half-life later
>>> b.count(ITEM_COUNTS, "i1", "clicks", 2)
>>> rows = [row for shard in b.by_shard(Keys("rv")).values() for row in shard]
>>> b.t_ref, [row[1:] for row in rows if "activity" in row[1]]
(86400000, [['rv:{10}:region:FR:activity', ['searches', 1.5]]])
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import chain

from relevo.core.decay import rate_per_ms
from relevo.core.keys import Keys
from relevo.features.definitions import FEATURES, Feature

INDEX = {f: i for i, f in enumerate(FEATURES)}
_RATES = {f: rate_per_ms(f.half_life_s) for f in FEATURES if f.half_life_s}
DEFS = [[f.aggregation, rate_per_ms(f.half_life_s) if f.half_life_s else 0, f.ttl_s, f.max_members or 0]
        for f in FEATURES]


class BatchUpdate:
    """An ``UpdateSink`` that sums a batch's updates per (feature, entity, member)."""

    def __init__(self) -> None:
        self.groups: defaultdict[tuple[Feature, str], dict[str, float]] = defaultdict(dict)
        self.t_ref = 0
        self._decayed: list[tuple[Feature, str, str, float, int]] = []
        self._each: defaultdict[tuple[Feature, str], Counter[str]] = defaultdict(Counter)

    def decayed(self, feature: Feature, entity_id: str, member: str, weight: float, ts: int) -> None:
        # t_ref is only known at the end of the batch, so decayed updates wait until then.
        self._decayed.append((feature, entity_id, member, weight, ts))
        if ts > self.t_ref:
            self.t_ref = ts

    def latest(self, feature: Feature, entity_id: str, member: str, ts: int) -> None:
        group = self.groups[(feature, entity_id)]
        if ts > group.get(member, 0):
            group[member] = ts

    def count(self, feature: Feature, entity_id: str, member: str, amount: int) -> None:
        group = self.groups[(feature, entity_id)]
        group[member] = group.get(member, 0) + amount

    def count_each(self, feature: Feature, entity_ids: Sequence[str], member: str) -> None:
        # Impressions are most of a search's updates: count them in C, fold them in once.
        self._each[(feature, member)].update(entity_ids)

    def _fold(self) -> None:
        groups = self.groups
        for (feature, member), counts in self._each.items():
            for entity_id, n in counts.items():
                group = groups[(feature, entity_id)]
                group[member] = group.get(member, 0) + n
        self._each.clear()
        t_ref, rates, exp = self.t_ref, _RATES, math.exp  # the decay rule (relevo.core.decay), inlined: hot
        for feature, entity_id, member, weight, ts in self._decayed:
            group = groups[(feature, entity_id)]
            group[member] = group.get(member, 0.0) + weight * exp((ts - t_ref) * rates[feature])
        self._decayed.clear()

    def by_shard(self, keys: Keys) -> dict[int, list[list[object]]]:
        """The updates as ``[feature index (0-based), key, [member, value, ...]]`` rows, per key shard."""
        self._fold()
        shards: dict[int, list[list[object]]] = {}
        located, flatten = keys.located, chain.from_iterable
        for (feature, entity_id), members in self.groups.items():
            key, shard = located(feature.entity, entity_id, feature.name)
            rows = shards.get(shard)
            if rows is None:
                rows = shards[shard] = []
            rows.append([INDEX[feature], key, list(flatten(members.items()))])
        return shards
