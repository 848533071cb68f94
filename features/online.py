"""The read path of the online store: features as of the stream clock.

Reads turn forward-decayed sums back into values as of the stream clock: the event
time every source has reached, which the region stream publishes (one event with a
wild timestamp cannot move it). Where no worker publishes it (a writer used on its
own), the latest event time any shard applied stands in. A replay of old data reads
as it did at the time.
``features.writer`` keeps them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from relevo.core.decay import factor
from relevo.core.keys import SHARDS, Keys
from relevo.core.redis import pipelined, raising_errors
from relevo.features.definitions import (
    ITEM_COUNTS,
    REGION_ACTIVITY,
    REGION_CATEGORIES,
    REGION_ITEMS,
    REGION_QUERIES,
    USER_CATEGORIES,
    USER_ITEMS,
    USER_LOCALES,
    USER_PRICES,
    USER_RECENT_ITEMS,
    USER_RECENT_QUERIES,
    USER_REGIONS,
    USER_SESSION_ITEMS,
    USER_SESSIONS,
    Feature,
)
from relevo.features.updates import bucket_price, items_of_session

TOP_N = 50  # members a read returns of a feature without a bound of its own, and of every region feature

# The fields a read of each entity can return, and the features each is made from: a read
# queues only the features of the fields asked for.
USER_FIELDS: dict[str, tuple[Feature, ...]] = {
    "items": (USER_ITEMS,), "categories": (USER_CATEGORIES,), "recent_items": (USER_RECENT_ITEMS,),
    "recent_queries": (USER_RECENT_QUERIES,), "session_id": (USER_SESSIONS,),
    "session_items": (USER_SESSIONS, USER_SESSION_ITEMS), "locale": (USER_LOCALES,), "region": (USER_REGIONS,),
    "price_band": (USER_PRICES,),
}
REGION_FIELDS: dict[str, tuple[Feature, ...]] = {
    "items": (REGION_ITEMS,), "queries": (REGION_QUERIES,), "categories": (REGION_CATEGORIES,),
    "activity": (REGION_ACTIVITY,), "searches": (REGION_ACTIVITY,), "clicks": (REGION_ACTIVITY,),
    "ctr": (REGION_ACTIVITY,),
}


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


def _decayed(pairs: list[list], landmark: bytes | None, feature: Feature, as_of: int) -> dict[str, float]:
    """Members and their sums (``[[member, sum], ...]``, as stored against ``landmark``) as of ``as_of``.

    >>> from relevo.features.definitions import USER_ITEMS
    >>> _decayed([[b"i1", 4.0], [b"i2", 1.0]], b"0", USER_ITEMS, int(USER_ITEMS.half_life_s * 1000))
    {'i1': 2.0, 'i2': 0.5}
    """
    if not pairs or landmark is None:
        return {}
    scale = factor(as_of - int(float(landmark)), feature.half_life_s)
    return {member.decode(): score * scale for member, score in pairs}


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


def _read_top(feature: Feature) -> int:
    # A region keeps up to thousands of members so its top stays right; a read serves the head.
    return TOP_N if feature.entity == "region" else feature.max_members or TOP_N


def _chosen(known: dict[str, tuple[Feature, ...]], fields: Collection[str] | None) -> list[str]:
    """The fields asked for (all when None), in the order of ``known``.

    >>> _chosen(REGION_FIELDS, ["ctr", "items"])
    ['items', 'ctr']
    >>> _chosen(REGION_FIELDS, ["colour"])
    Traceback (most recent call last):
    ...
    ValueError: unknown field(s) colour; known: items, queries, categories, activity, searches, clicks, ctr
    """
    if fields is None:
        return list(known)
    unknown = sorted(set(fields) - known.keys())
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [name for name in known if name in fields]


class _Reads:
    """Feature reads as plain commands, the clock's first, all sent in one round trip; a value is
    taken from the replies (RESP3's: scores as doubles, hashes as maps) by where it was queued.
    (Plain commands, not a script per entity: Redis spent ~3 × as long turning a script's
    replies into Lua values and back as reading them.)"""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.commands: list[tuple[Any, ...]] = [("GET", keys.clock)]
        self.slots: dict[tuple[Feature, str], int] = {}  # -> its first reply

    def queue(self, features: Iterable[Feature], entity_id: str) -> None:
        for feature in features:
            self.slots[feature, entity_id] = len(self.commands)
            key = self.keys.entity(feature.entity, entity_id, feature.name)
            if feature.aggregation == "decayed":
                self.commands += [("ZREVRANGE", key, 0, _read_top(feature) - 1, "WITHSCORES"), ("GET", key + "~L")]
            elif feature.aggregation == "latest":
                self.commands.append(("ZREVRANGE", key, 0, -1))
            else:
                self.commands.append(("HGETALL", key))

    def values(self, replies: list[Any], features: Iterable[Feature], entity_id: str, as_of: int,
               ) -> dict[Feature, Any]:
        out: dict[Feature, Any] = {}
        for feature in features:
            at = self.slots[feature, entity_id]
            if feature.aggregation == "decayed":
                out[feature] = _decayed(replies[at], replies[at + 1], feature, as_of)
            elif feature.aggregation == "latest":
                out[feature] = _members(replies[at])
            else:
                out[feature] = {name.decode(): float(n) for name, n in replies[at].items()}
        return out


def _latest_session(values: dict[Feature, Any]) -> str | None:
    return next(iter(values[USER_SESSIONS]), None)  # members come newest first


def _user_field(name: str, values: dict[Feature, Any]) -> Any:
    if name == "session_id":
        return _latest_session(values)
    if name == "session_items":
        session = _latest_session(values)
        return items_of_session(values[USER_SESSION_ITEMS], session) if session else []
    if name in ("locale", "region"):
        return _argmax(values[USER_FIELDS[name][0]])
    if name == "price_band":
        return price_band(values[USER_PRICES])
    return values[USER_FIELDS[name][0]]


def _region_field(name: str, values: dict[Feature, Any]) -> Any:
    activity = values.get(REGION_ACTIVITY, {})
    if name in ("searches", "clicks"):
        return activity.get(name, 0.0)
    if name == "ctr":
        searches = activity.get("searches", 0.0)
        return activity.get("clicks", 0.0) / searches if searches else 0.0
    return values[REGION_FIELDS[name][0]]


def _item(item_id: str, counts: dict[str, float]) -> dict[str, Any]:
    totals: dict[str, float] = {}
    by_region: dict[str, dict[str, float]] = {}
    for name, number in counts.items():
        region, _, counter = name.rpartition("|")
        (by_region.setdefault(region, {}) if region else totals)[counter] = number
    return {"item_id": item_id, **_with_ctr(totals),
            "by_region": {r: _with_ctr(c) for r, c in sorted(by_region.items())}}


def _with_ctr(counts: dict[str, float]) -> dict[str, float]:
    out = {k: counts.get(k, 0.0) for k in ("impressions", "views", "clicks", "carts", "purchases")}
    out["ctr"] = out["clicks"] / out["impressions"] if out["impressions"] else 0.0
    return out


class OnlineStore:
    """Reads user, region and item features (as of the stream clock unless told otherwise).

    A read of any number of entities is one round trip: the clock and, per entity, only the
    features behind the fields asked for (``USER_FIELDS``, ``REGION_FIELDS``). An entity is
    ``None`` when none of the features read hold anything.
    """

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

    async def user(self, user_id: str, as_of: int | None = None, fields: Collection[str] | None = None,
                   ) -> dict[str, Any] | None:
        return (await self.many([user_id], (), (), as_of, user_fields=fields))[0][0]

    async def region(self, region: str, as_of: int | None = None, fields: Collection[str] | None = None,
                     ) -> dict[str, Any] | None:
        return (await self.many((), [region], (), as_of, region_fields=fields))[1][0]

    async def item(self, item_id: str) -> dict[str, Any] | None:
        return (await self.many((), (), [item_id]))[2][0]

    async def many(self, users: Sequence[str], regions: Sequence[str], items: Sequence[str],
                   as_of: int | None = None, user_fields: Collection[str] | None = None,
                   region_fields: Collection[str] | None = None,
                   ) -> tuple[list[dict[str, Any] | None], ...]:
        """Features of many users, regions and items (``None`` where unknown): the ``user_fields``
        and ``region_fields`` asked for (all by default), each item's counts."""
        user_names, region_names = _chosen(USER_FIELDS, user_fields), _chosen(REGION_FIELDS, region_fields)
        user_features = {f for name in user_names for f in USER_FIELDS[name]}
        region_features = {f for name in region_names for f in REGION_FIELDS[name]}
        reads = _Reads(self.keys)
        for user_id in users:
            reads.queue(user_features, user_id)
        for region in regions:
            reads.queue(region_features, region)
        for item_id in items:
            reads.queue((ITEM_COUNTS,), item_id)
        replies = raising_errors(await pipelined(self.redis, reads.commands))
        as_of = _read_time(as_of, await self._as_of(replies[0]))
        found_users = []
        for user_id in users:
            values = reads.values(replies, user_features, user_id, as_of)
            found_users.append({"user_id": user_id, **{name: _user_field(name, values) for name in user_names},
                                "as_of": as_of} if any(values.values()) else None)
        found_regions = []
        for region in regions:
            values = reads.values(replies, region_features, region, as_of)
            found_regions.append({"region": region, **{name: _region_field(name, values) for name in region_names},
                                  "as_of": as_of} if any(values.values()) else None)
        found_items = []
        for item_id in items:
            counts = reads.values(replies, (ITEM_COUNTS,), item_id, as_of)[ITEM_COUNTS]
            found_items.append(_item(item_id, counts) if counts else None)
        return found_users, found_regions, found_items
