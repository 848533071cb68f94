"""From an event to the feature updates it implies (pure: no Redis here).

>>> ups = updates({"type": "click", "event_id": "e1", "ts": 1_000, "user_id": "u1",
...                "session_id": "s1", "region": "FR", "locale": "fr-FR", "item_id": "i9",
...                "kind": "click", "price": 80.0})
>>> sorted({(u.feature.entity, u.feature.name) for u in ups})[:4]
[('item', 'counts'), ('region', 'activity'), ('region', 'items'), ('session', 'items')]
>>> price_bucket(80.0), bucket_price("6.25")
('6.25', 76.1)
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

from features.definitions import (
    ITEM_COUNTS,
    REGION_ACTIVITY,
    REGION_CATEGORIES,
    REGION_ITEMS,
    REGION_QUERIES,
    REGION_WEIGHTS,
    SESSION_ITEMS,
    USER_CATEGORIES,
    USER_ITEMS,
    USER_LOCALES,
    USER_PRICES,
    USER_RECENT_ITEMS,
    USER_RECENT_QUERIES,
    USER_REGIONS,
    USER_SESSIONS,
    USER_WEIGHTS,
    Feature,
)
from models.normalize import normalize
from streams.events import Event


class Update(NamedTuple):
    """Add ``value`` to ``member`` of ``feature`` of one entity (for ``latest``: the event time)."""

    feature: Feature
    entity_id: str
    member: str
    value: float


def price_bucket(price: float) -> str:
    """Quarter-octave bucket of a price: close prices share a bucket, on any currency's scale."""
    return f"{round(math.log2(price) * 4) / 4:g}"


def bucket_price(bucket: str) -> float:
    """The price at the centre of a bucket."""
    return round(2 ** float(bucket), 1)


def _user_side(event: Event, weight: float) -> Iterator[Update]:
    user, ts = event["user_id"], event["ts"]
    yield Update(USER_SESSIONS, user, event["session_id"], ts)
    yield Update(USER_REGIONS, user, event["region"], 1.0)
    if event.get("locale"):
        yield Update(USER_LOCALES, user, event["locale"], 1.0)
    item = event.get("item_id")
    if item is None:
        return
    yield Update(USER_ITEMS, user, item, weight)
    yield Update(USER_RECENT_ITEMS, user, item, ts)
    yield Update(SESSION_ITEMS, event["session_id"], item, ts)
    if event.get("category"):
        yield Update(USER_CATEGORIES, user, event["category"], weight)
    if event.get("price"):
        yield Update(USER_PRICES, user, price_bucket(event["price"]), 1.0)


def _item_counts(item: str, region: str, counter: str, amount: float) -> Iterator[Update]:
    yield Update(ITEM_COUNTS, item, counter, amount)
    yield Update(ITEM_COUNTS, item, f"{region}|{counter}", amount)


def _search(event: Event) -> Iterator[Update]:
    region = event["region"]
    yield from _user_side(event, 0.0)
    yield Update(REGION_ACTIVITY, region, "searches", 1.0)
    query = normalize(event.get("query", ""))
    if query:
        yield Update(USER_RECENT_QUERIES, event["user_id"], query, event["ts"])
        yield Update(REGION_QUERIES, region, query, 1.0)
    results = event.get("results", ())
    if results:
        yield Update(REGION_ACTIVITY, region, "impressions", float(len(results)))
        for item in results:
            yield from _item_counts(item, region, "impressions", 1.0)


def _interaction(event: Event, kind: str, amount: float) -> Iterator[Update]:
    region, item = event["region"], event["item_id"]
    yield from _user_side(event, USER_WEIGHTS[kind])
    yield Update(REGION_ACTIVITY, region, f"{kind}s", 1.0)
    yield from _item_counts(item, region, f"{kind}s", amount)
    region_weight = REGION_WEIGHTS[kind]
    if region_weight:
        yield Update(REGION_ITEMS, region, item, region_weight)
        if event.get("category"):
            yield Update(REGION_CATEGORIES, region, event["category"], region_weight)


def updates(event: Event) -> list[Update]:
    """Every feature update one validated event implies."""
    if event["type"] == "search":
        return list(_search(event))
    if event["type"] == "click":
        return list(_interaction(event, event.get("kind", "click"), 1.0))
    return list(_interaction(event, "purchase", float(event.get("quantity", 1))))
