"""From an event to the feature updates it implies (pure: no Redis here).

``apply_event`` tells an ``UpdateSink`` what changes; the sink decides how to
keep it (``relevo.features.batch`` aggregates a whole batch before it reaches Redis).

>>> sink = RecordingSink()
>>> apply_event({"type": "click", "event_id": "e1", "ts": 1_000, "user_id": "u1",
...              "session_id": "s1", "region": "FR", "locale": "fr-FR", "item_id": "i9",
...              "kind": "click", "price": 80.0}, sink)
>>> sorted({(f.entity, f.name) for _, f, *_ in sink.calls})[:4]
[('item', 'counts'), ('region', 'activity'), ('region', 'items'), ('user', 'items')]
>>> price_bucket(80.0), bucket_price("6.25")
('6.25', 76.1)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol

from relevo.core.text import normalize
from relevo.features.definitions import (
    ITEM_COUNTS,
    REGION_ACTIVITY,
    REGION_CATEGORIES,
    REGION_ITEMS,
    REGION_QUERIES,
    REGION_WEIGHTS,
    USER_CATEGORIES,
    USER_ITEMS,
    USER_LOCALES,
    USER_PRICES,
    USER_RECENT_ITEMS,
    USER_RECENT_QUERIES,
    USER_REGIONS,
    USER_SESSION_ITEMS,
    USER_SESSIONS,
    USER_WEIGHTS,
    Feature,
)
from relevo.streams.events import Event


class UpdateSink(Protocol):
    """Receives the updates of events; one method per aggregation."""

    def decayed(self, feature: Feature, entity_id: str, member: str, weight: float, ts: int) -> None: ...

    def latest(self, feature: Feature, entity_id: str, member: str, ts: int) -> None: ...

    def count(self, feature: Feature, entity_id: str, member: str, amount: int) -> None: ...

    def count_each(self, feature: Feature, entity_ids: Sequence[str], member: str) -> None:
        """Add 1 to ``member`` of every entity listed (a search's impressions)."""


class RecordingSink:
    """A sink that only records the calls: for tests and for explaining an event."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Feature, str, str, float]] = []

    def decayed(self, feature: Feature, entity_id: str, member: str, weight: float, ts: int) -> None:
        self.calls.append(("decayed", feature, entity_id, member, weight))

    def latest(self, feature: Feature, entity_id: str, member: str, ts: int) -> None:
        self.calls.append(("latest", feature, entity_id, member, ts))

    def count(self, feature: Feature, entity_id: str, member: str, amount: int) -> None:
        self.calls.append(("count", feature, entity_id, member, amount))

    def count_each(self, feature: Feature, entity_ids: Sequence[str], member: str) -> None:
        for entity_id in entity_ids:
            self.count(feature, entity_id, member, 1)


SESSION_SEPARATOR = "\x1f"  # ids are printable (the event contract), so neither part can hold it


def session_item(session_id: str, item_id: str) -> str:
    """The member of ``USER_SESSION_ITEMS`` saying ``item_id`` was touched in ``session_id``."""
    return f"{session_id}{SESSION_SEPARATOR}{item_id}"


def items_of_session(members: Iterable[str], session_id: str) -> list[str]:
    """The items of ``session_id`` among ``USER_SESSION_ITEMS`` members, in their order.

    >>> items_of_session([session_item("s2", "i3"), session_item("s1", "i1"), session_item("s2", "i:2")], "s2")
    ['i3', 'i:2']
    """
    prefix = session_id + SESSION_SEPARATOR
    return [member[len(prefix):] for member in members if member.startswith(prefix)]


def price_bucket(price: float) -> str:
    """Quarter-octave bucket of a price: close prices share a bucket, on any currency's scale."""
    return f"{round(math.log2(price) * 4) / 4:g}"


def bucket_price(bucket: str) -> float:
    """The price at the centre of a bucket."""
    return round(2 ** float(bucket), 1)


def _user_side(event: Event, weight: float, sink: UpdateSink) -> None:
    user, ts = event["user_id"], event["ts"]
    sink.latest(USER_SESSIONS, user, event["session_id"], ts)
    sink.decayed(USER_REGIONS, user, event["region"], 1.0, ts)
    if event.get("locale"):
        sink.decayed(USER_LOCALES, user, event["locale"], 1.0, ts)
    item = event.get("item_id")
    if item is None:
        return
    sink.decayed(USER_ITEMS, user, item, weight, ts)
    sink.latest(USER_RECENT_ITEMS, user, item, ts)
    sink.latest(USER_SESSION_ITEMS, user, session_item(event["session_id"], item), ts)
    if event.get("category"):
        sink.decayed(USER_CATEGORIES, user, event["category"], weight, ts)
    if event.get("price"):
        sink.decayed(USER_PRICES, user, price_bucket(event["price"]), 1.0, ts)


def _search(event: Event, sink: UpdateSink) -> None:
    region, ts = event["region"], event["ts"]
    _user_side(event, 0.0, sink)
    sink.decayed(REGION_ACTIVITY, region, "searches", 1.0, ts)
    query = normalize(event.get("query", ""))
    if query:
        sink.latest(USER_RECENT_QUERIES, event["user_id"], query, ts)
        sink.decayed(REGION_QUERIES, region, query, 1.0, ts)
    results = event.get("results", ())
    if results:
        sink.decayed(REGION_ACTIVITY, region, "impressions", float(len(results)), ts)
        sink.count_each(ITEM_COUNTS, results, "impressions")
        sink.count_each(ITEM_COUNTS, results, f"{region}|impressions")


def _interaction(event: Event, kind: str, amount: int, sink: UpdateSink) -> None:
    region, item, ts = event["region"], event["item_id"], event["ts"]
    _user_side(event, USER_WEIGHTS[kind], sink)
    sink.decayed(REGION_ACTIVITY, region, f"{kind}s", 1.0, ts)
    sink.count(ITEM_COUNTS, item, f"{kind}s", amount)
    sink.count(ITEM_COUNTS, item, f"{region}|{kind}s", amount)
    region_weight = REGION_WEIGHTS[kind]
    if region_weight:
        sink.decayed(REGION_ITEMS, region, item, region_weight, ts)
        if event.get("category"):
            sink.decayed(REGION_CATEGORIES, region, event["category"], region_weight, ts)


def apply_event(event: Event, sink: UpdateSink) -> None:
    """Tell ``sink`` every feature update one validated event implies."""
    if event["type"] == "search":
        _search(event, sink)
    elif event["type"] == "click":
        _interaction(event, event.get("kind", "click"), 1, sink)
    else:
        _interaction(event, "purchase", event.get("quantity", 1), sink)
