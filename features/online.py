"""The read path of the online store: features as of the stream clock.

Reads turn forward-decayed sums back into values as of the stream clock: the event
time every source has reached, which the region stream publishes (one event with a
wild timestamp cannot move it). Where no worker publishes it (a writer used on its
own), the latest event time any shard applied stands in. A replay of old data reads
as it did at the time.
``features.writer`` keeps them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from relevo.core.decay import factor
from relevo.core.keys import SHARDS, Keys
from relevo.features.definitions import (
    ITEM_COUNTS,
    REGION_ACTIVITY,
    REGION_CATEGORIES,
    REGION_ITEMS,
    REGION_QUERIES,
    SESSION_ITEMS,
    USER_CATEGORIES,
    USER_ITEMS,
    USER_LOCALES,
    USER_PRICES,
    USER_RECENT_ITEMS,
    USER_RECENT_QUERIES,
    USER_REGIONS,
    USER_SESSIONS,
    Feature,
)
from relevo.features.updates import bucket_price

TOP_N = 50
CONCURRENT_READS = 32  # reads of one batch in flight at once: one request never takes the whole pool


class AsOfBeforeClock(ValueError):
    """A read as of a time before the stream clock: decayed sums can only be projected forward."""


def _read_time(requested: int | None, clock: int) -> int:
    """The time a read is as of: ``requested``, else the clock.

    >>> _read_time(None, 5), _read_time(9, 5)
    (5, 9)
    >>> _read_time(1, 5)
    Traceback (most recent call last):
    ...
    relevo.features.online.AsOfBeforeClock: as_of 1 is before the stream clock 5: ...
    """
    if requested is None:
        return clock
    if requested < clock:
        raise AsOfBeforeClock(f"as_of {requested} is before the stream clock {clock}: "
                              "features are kept as of the latest event")
    return requested


def _decayed(rows: list[tuple[bytes, float]], landmark: bytes | None, feature: Feature,
             as_of: int) -> dict[str, float]:
    if not rows or landmark is None:
        return {}
    scale = factor(as_of - int(float(landmark)), feature.half_life_s)
    return {member.decode(): score * scale for member, score in rows}


def _members(rows: list[bytes]) -> list[str]:
    return [m.decode() for m in rows]


def _argmax(scores: dict[str, float]) -> str | None:
    return max(scores, key=scores.__getitem__) if scores else None


def price_band(buckets: dict[str, float]) -> dict[str, float] | None:
    """Weighted quartiles of the prices a user engages with.

    >>> price_band({"6": 1.0, "7": 2.0, "8": 1.0})
    {'p25': 64.0, 'p50': 128.0, 'p75': 128.0}
    """
    total = sum(buckets.values())
    if total <= 0:
        return None
    ordered = sorted(buckets.items(), key=lambda kv: float(kv[0]))
    band, seen = {}, 0.0
    quartiles = iter((("p25", 0.25), ("p50", 0.5), ("p75", 0.75)))
    name, q = next(quartiles)
    for bucket, weight in ordered:
        seen += weight
        while seen >= q * total - 1e-12:
            band[name] = bucket_price(bucket)
            nxt = next(quartiles, None)
            if nxt is None:
                return band
            name, q = nxt
    return band


class OnlineStore:
    """Reads user, region and item features (as of the stream clock unless told otherwise)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys

    async def clock(self) -> int:
        return await self._as_of(await self.redis.get(self.keys.clock))

    async def _as_of(self, clock: bytes | None) -> int:
        """The stream clock, else (no worker publishes one) the latest event time a shard applied."""
        if clock is not None:
            return int(clock)
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in range(SHARDS):
                pipe.get(self.keys.in_shard(shard, "latest"))
            latest = await pipe.execute()
        return max((int(float(v)) for v in latest if v is not None), default=0)

    def _queue_decayed(self, pipe: Any, feature: Feature, entity_id: str, top: int = TOP_N) -> None:
        key = self.keys.entity(feature.entity, entity_id, feature.name)
        pipe.zrevrange(key, 0, top - 1, withscores=True)
        pipe.get(key + "~L")

    def _queue_latest(self, pipe: Any, feature: Feature, entity_id: str) -> None:
        pipe.zrevrange(self.keys.entity(feature.entity, entity_id, feature.name), 0, -1)

    async def user(self, user_id: str, as_of: int | None = None) -> dict[str, Any] | None:
        decayed = (USER_ITEMS, USER_CATEGORIES, USER_LOCALES, USER_REGIONS, USER_PRICES)
        latest = (USER_RECENT_ITEMS, USER_RECENT_QUERIES, USER_SESSIONS)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.clock)
            for f in decayed:
                self._queue_decayed(pipe, f, user_id, top=f.max_members or TOP_N)
            for f in latest:
                self._queue_latest(pipe, f, user_id)
            res = await pipe.execute()
        as_of = _read_time(as_of, await self._as_of(res[0]))
        values = {f.name: _decayed(res[1 + 2 * i], res[2 + 2 * i], f, as_of) for i, f in enumerate(decayed)}
        recent_items, recent_queries, sessions = (_members(r) for r in res[1 + 2 * len(decayed):])
        if not (values["regions"] or recent_items or sessions):
            return None
        session_items: list[str] = []
        if sessions:
            key = self.keys.entity("session", sessions[0], SESSION_ITEMS.name)
            session_items = _members(await self.redis.zrevrange(key, 0, -1))
        return {
            "user_id": user_id,
            "items": values["items"],
            "categories": values["categories"],
            "recent_items": recent_items,
            "recent_queries": recent_queries,
            "session_id": sessions[0] if sessions else None,
            "session_items": session_items,
            "locale": _argmax(values["locales"]),
            "region": _argmax(values["regions"]),
            "price_band": price_band(values["prices"]),
            "as_of": as_of,
        }

    async def region(self, region: str, as_of: int | None = None) -> dict[str, Any] | None:
        decayed = (REGION_ITEMS, REGION_QUERIES, REGION_CATEGORIES, REGION_ACTIVITY)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.clock)
            for f in decayed:
                self._queue_decayed(pipe, f, region)
            res = await pipe.execute()
        as_of = _read_time(as_of, await self._as_of(res[0]))
        items, queries, categories, activity = (
            _decayed(res[1 + 2 * i], res[2 + 2 * i], f, as_of) for i, f in enumerate(decayed))
        if not activity:
            return None
        searches, clicks = activity.get("searches", 0.0), activity.get("clicks", 0.0)
        return {
            "region": region,
            "items": items,
            "queries": queries,
            "categories": categories,
            "activity": activity,
            "searches": searches,
            "clicks": clicks,
            "ctr": clicks / searches if searches else 0.0,
            "as_of": as_of,
        }

    async def item(self, item_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(self.keys.entity("item", item_id, ITEM_COUNTS.name))
        if not raw:
            return None
        totals: dict[str, float] = {}
        by_region: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            name, number = field.decode(), float(value)
            region, _, counter = name.rpartition("|")
            (by_region.setdefault(region, {}) if region else totals)[counter] = number
        return {"item_id": item_id, **_with_ctr(totals),
                "by_region": {r: _with_ctr(c) for r, c in sorted(by_region.items())}}

    async def many(self, users: Sequence[str], regions: Sequence[str], items: Sequence[str],
                   ) -> tuple[list[dict[str, Any] | None], ...]:
        """Features of many users, regions and items (``None`` where unknown), a bounded number
        of reads at a time."""
        reads = [*(self.user(u) for u in users), *(self.region(r) for r in regions),
                 *(self.item(i) for i in items)]
        found: list[dict[str, Any] | None] = []
        for start in range(0, len(reads), CONCURRENT_READS):
            found += await asyncio.gather(*reads[start:start + CONCURRENT_READS])
        return found[:len(users)], found[len(users):len(users) + len(regions)], found[len(users) + len(regions):]


def _with_ctr(counts: dict[str, float]) -> dict[str, float]:
    out = {k: counts.get(k, 0.0) for k in ("impressions", "views", "clicks", "carts", "purchases")}
    out["ctr"] = out["clicks"] / out["impressions"] if out["impressions"] else 0.0
    return out
