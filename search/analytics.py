"""Search analytics per region: what people search for, what finds nothing, what nobody clicks.

``SearchAnalytics`` is a region operator (``relevo.streams.regions``): it sees its
partition's events in event-time order, so its figures are the same whichever worker read
which user. Per region and normalised query it keeps decayed counts (event time, half-life
``half_life_s``) of searches, searches that showed no result, and, once a search's outcome
is known, whether it was clicked: a click or cart naming its ``search_id`` (else the
session's latest open search that showed the item) or a purchase. A search's outcome is
final when the stream has passed its time plus ``wait_s`` (every search is final once
every source is idle). Empty queries (browsing) count in the region's totals only.

``flush`` writes each changed region's summary (top queries, queries with no result,
queries with no click, CTR per query) as JSON into one hash per region partition
(``Keys.search_analytics``): one slot per call, so it works on Redis Cluster. A summary
ranks every query of its region, so it is written at most once per ``publish_s`` (the
stage flushes its partitions when it falls idle too, so the last changes are written). The state
is the operator's ``state``, snapshotted with its partition; the summary is derived from
it, so writing it again after a restart changes nothing.

>>> import asyncio
>>> analytics = SearchAnalytics(0, None, wait_s=5)
>>> base = {"session_id": "s", "user_id": "u", "region": "FR"}
>>> analytics.apply([
...     {**base, "type": "search", "event_id": "1", "ts": 1_000, "search_id": "q1", "query": "Hôtel Paris",
...      "results": ["a", "b"]},
...     {**base, "type": "click", "event_id": "2", "ts": 2_000, "item_id": "b", "kind": "click", "search_id": "q1"},
...     {**base, "type": "search", "event_id": "3", "ts": 3_000, "search_id": "q2", "query": "hotel paris",
...      "results": ["c"]},
...     {**base, "type": "search", "event_id": "4", "ts": 4_000, "search_id": "q3", "query": "zzz", "results": []}],
...     horizon=float("inf"), reach=4_000)
>>> summary = analytics.summary("FR")
>>> [(q["query"], q["searches"], q["ctr"]) for q in summary["top"]]
[('hotel paris', 2.0, 0.5), ('zzz', 1.0, None)]
>>> [q["query"] for q in summary["no_result"]], [q["query"] for q in summary["no_click"]]
(['zzz'], ['hotel paris'])
>>> summary["totals"]["searches"], summary["totals"]["ctr"]
(3.0, 0.5)
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from relevo.core.decay import factor
from relevo.core.keys import Keys
from relevo.core.text import normalize
from relevo.streams.events import Event

SEARCHES, NO_RESULT, CLICKED, NO_CLICK = range(4)  # the decayed counts of a query, in this order
FIGURES = ("searches", "no_result", "clicked", "no_click")
CLICKS = frozenset({"click", "cart"})  # a view is no click-through


@dataclass
class Counts:
    """Decayed counts (``FIGURES``) as of event time ``at``."""

    at: int
    values: list[float] = field(default_factory=lambda: [0.0] * len(FIGURES))

    def add(self, figure: int, ts: int, half_life_s: float) -> None:
        if ts >= self.at:
            scale = factor(ts - self.at, half_life_s)
            self.values, self.at = [v * scale for v in self.values], ts
            self.values[figure] += 1.0
        else:
            self.values[figure] += factor(self.at - ts, half_life_s)

    def as_of(self, ts: int, half_life_s: float) -> list[float]:
        scale = factor(ts - self.at, half_life_s)
        return [v * scale for v in self.values]


@dataclass
class _Open:
    region: str
    query: str
    ts: int
    session_id: str
    results: frozenset[str]
    clicked: bool = False


@dataclass
class AnalyticsState:
    """Everything a restart must keep (picklable)."""

    queries: dict[str, dict[str, Counts]] = field(default_factory=dict)  # region -> query -> counts
    totals: dict[str, Counts] = field(default_factory=dict)  # region -> counts over every search
    open: OrderedDict[str, _Open] = field(default_factory=OrderedDict)  # by search id, in event time
    latest: dict[str, str] = field(default_factory=dict)  # session -> its latest open search id
    closed: OrderedDict[str, None] = field(default_factory=OrderedDict)  # recent search ids (sent twice)
    clock: dict[str, int] = field(default_factory=dict)  # region -> latest event time


class SearchAnalytics:
    """The search-analytics operator of one region partition (see the module doc)."""

    name = "analytics"

    def __init__(self, partition: int, redis: aioredis.Redis | None, keys: Keys | None = None, *,
                 wait_s: float = 10.0, half_life_s: float = 7 * 86400, top: int = 20,
                 max_queries: int = 10_000, remember_searches: int = 100_000, publish_s: float = 1.0) -> None:
        self.partition, self.redis, self.keys = partition, redis, keys or Keys()
        self.publish_s, self._published_at = publish_s, float("-inf")
        self.wait_ms, self.half_life_s, self.top = int(wait_s * 1000), half_life_s, top
        self.max_queries, self.remember = max_queries, remember_searches
        self.state = AnalyticsState()
        self._changed: set[str] = set()

    def apply(self, events: Sequence[Event], horizon: float, reach: int) -> None:
        for event in events:
            self._close(event["ts"] - self.wait_ms)  # batch boundaries never change what is final when
            self.state.clock[event["region"]] = max(event["ts"], self.state.clock.get(event["region"], 0))
            if event["type"] == "search":
                self._search(event)
            elif event["type"] == "purchase" or event.get("kind") in CLICKS:
                self._click(event)
        if horizon == float("inf"):
            self._close(None)
        elif horizon != float("-inf"):
            self._close(int(horizon) - self.wait_ms)

    def _count(self, region: str, query: str, figure: int, ts: int) -> None:
        state = self.state
        state.totals.setdefault(region, Counts(ts)).add(figure, ts, self.half_life_s)
        if query:
            queries = state.queries.setdefault(region, {})
            queries.setdefault(query, Counts(ts)).add(figure, ts, self.half_life_s)
            if len(queries) > self.max_queries:
                self._forget(region, queries)
        self._changed.add(region)

    def _search(self, event: Event) -> None:
        state, search_id = self.state, event["search_id"]
        if search_id in state.open or search_id in state.closed:
            return  # the same search sent twice
        region, query, results = event["region"], normalize(event.get("query") or ""), event.get("results") or ()
        self._count(region, query, SEARCHES, event["ts"])
        if not results:
            self._count(region, query, NO_RESULT, event["ts"])
            self._remember(search_id)
            return
        state.open[search_id] = _Open(region, query, event["ts"], event["session_id"], frozenset(results))
        state.latest[event["session_id"]] = search_id

    def _click(self, event: Event) -> None:
        state = self.state
        search = state.open.get(event.get("search_id") or "")
        if search is None:  # no (open) search named: the session's latest, if it showed the item
            search = state.open.get(state.latest.get(event["session_id"], ""))
        if search is not None and event["item_id"] in search.results:
            search.clicked = True

    def _close(self, until_ts: int | None) -> None:
        """Count the outcome of every open search older than ``until_ts`` (all when None)."""
        state = self.state
        while state.open:
            search_id, search = next(iter(state.open.items()))
            if until_ts is not None and search.ts >= until_ts:
                break
            del state.open[search_id]
            if state.latest.get(search.session_id) == search_id:
                del state.latest[search.session_id]
            self._count(search.region, search.query, CLICKED if search.clicked else NO_CLICK, search.ts)
            self._remember(search_id)

    def _remember(self, search_id: str) -> None:
        closed = self.state.closed
        closed[search_id] = None
        while len(closed) > self.remember:
            closed.popitem(last=False)

    def _forget(self, region: str, queries: dict[str, Counts]) -> None:
        """Drop the least searched tenth of a region's queries (its memory stays bounded)."""
        now = self.state.clock.get(region, 0)
        ranked = sorted(queries, key=lambda q: (queries[q].as_of(now, self.half_life_s)[SEARCHES], q))
        for query in ranked[:max(1, len(ranked) // 10)]:
            del queries[query]

    def summary(self, region: str) -> dict[str, Any]:
        """The region's figures as of its latest event: totals, and the top queries by searches,
        by searches with no result and by searches with no click."""
        now = self.state.clock.get(region, 0)
        rows = [_row(query, counts.as_of(now, self.half_life_s))
                for query, counts in self.state.queries.get(region, {}).items()]
        total = self.state.totals.get(region)

        def best(figure: str) -> list[dict[str, Any]]:
            return heapq.nlargest(self.top, (r for r in rows if r[figure] > 0), key=lambda r: (r[figure], r["query"]))
        totals = _row("", total.as_of(now, self.half_life_s) if total else [0.0] * len(FIGURES))
        del totals["query"]
        return {"region": region, "as_of": now, "half_life_s": self.half_life_s, "totals": totals,
                "top": best("searches"), "no_result": best("no_result"), "no_click": best("no_click")}

    async def flush(self) -> None:
        if not self._changed or self.redis is None or time.monotonic() - self._published_at < self.publish_s:
            return
        self._published_at = time.monotonic()
        regions, self._changed = sorted(self._changed), set()
        await self.redis.hset(self.keys.search_analytics(self.partition),
                              mapping={r: orjson.dumps(self.summary(r)) for r in regions})


def _row(query: str, values: list[float]) -> dict[str, Any]:
    row: dict[str, Any] = {"query": query, **{name: round(v, 3) for name, v in zip(FIGURES, values, strict=True)}}
    decided = values[CLICKED] + values[NO_CLICK]
    row["ctr"] = round(values[CLICKED] / decided, 4) if decided > 1e-9 else None
    return row


async def read_analytics(redis: aioredis.Redis, keys: Keys, partitions: int) -> dict[str, dict[str, Any]]:
    """Every region's summary (as ``SearchAnalytics.summary`` made it), by region."""
    found: dict[str, dict[str, Any]] = {}
    for partition in range(partitions):  # one call per partition's hash: one slot each
        for region, raw in (await redis.hgetall(keys.search_analytics(partition))).items():
            found[region.decode()] = orjson.loads(raw)
    return dict(sorted(found.items()))
