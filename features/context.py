"""Point-in-time ranking features from a small in-process view of the stream.

``ContextState`` remembers what each session touched (when, how often, how
strongly), each user's history, and per region its items' decayed popularity,
impressions, clicks and last prices. Every statistic is about a session, a user or a
region, so a state fed one region partition's events (``relevo.streams.regions``) is
the same whichever worker read which user: the examples builder and serving each keep
one per partition. ``features(search)`` turns a result list into one feature row per
item *as of now*; callers take that snapshot before they ``observe`` the
events that follow the search, so an example never sees its own outcome.

>>> state = ContextState()
>>> search = {"type": "search", "ts": 1_000, "session_id": "s", "user_id": "u",
...           "region": "FR", "results": ["a", "b", "c"]}
>>> state.features(search)[1][FEATURES.index("touched")]
0.0
>>> state.observe({"type": "click", "ts": 2_000, "session_id": "s", "user_id": "u",
...                "region": "FR", "item_id": "b", "kind": "view"})
>>> rows = state.features({**search, "ts": 3_000})
>>> rows[1][FEATURES.index("touched")], rows[2][FEATURES.index("after_last_touched")]
(1.0, 1.0)
"""

from __future__ import annotations

import functools
import math
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from relevo.core.decay import factor, rate_per_ms
from relevo.core.settings import POPULARITY_HALF_LIFE_S

# Relevance grade of each interaction kind; "shown only" is 0.
GRADES = {"view": 1, "click": 2, "cart": 3, "purchase": 4}

FEATURES = (
    "position_inverse", "position_fraction", "price_rank", "price_vs_median",
    "touched", "touch_count", "touch_recency", "last_touched", "touch_freshness", "touch_grade",
    "after_last_touched", "offset_from_last_touched", "list_has_touched",
    "region_popularity", "region_popularity_rank", "user_affinity",
    "session_breadth", "list_length",
    "session_shown", "session_clicks", "last_clicked", "item_ctr", "item_impressions",
    "last_touched_position", "touch_age", "session_rule",
    "last_touch_clicked", "searched_for", "offset_after_click", "price_vs_session",
    "session_idle", "session_searches", "mobile", "filters",
)
# The rule "items the session touched first, most recent first, then the shown order" as a
# feature: the ranker starts from it (see ``RankerConfig.rule_weight``) and learns corrections.
RULE = FEATURES.index("session_rule")


@dataclass
class Touch:
    """How one session interacted with one item."""

    last_ts: int
    count: int
    grade: int
    clicks: int = 0


@dataclass
class Session:
    """What one session touched, what it was shown, and what it last clicked."""

    touches: dict[str, Touch] = field(default_factory=dict)
    shown: Counter[str] = field(default_factory=Counter)
    searched: dict[str, int] = field(default_factory=dict)  # items a one-result search named, and when
    log_prices: list[float] = field(default_factory=list)  # of the items it touched, latest last
    searches: int = 0
    last_ts: int | None = None
    last_click: str | None = None


def _plus(entry: tuple[float, int] | None, ts: int, weight: float, rate: float) -> tuple[float, int]:
    """``entry`` (a value as of its time) with ``weight`` added at ``ts``, as of the later time.

    A late weight counts as decayed to the entry's time, so the sum does not depend on the
    order the adds come in:

    >>> rate = rate_per_ms(1.0)  # a half-life of one second
    >>> _plus(_plus(None, 0, 1.0, rate), 1000, 1.0, rate), _plus(_plus(None, 1000, 1.0, rate), 0, 1.0, rate)
    ((1.5, 1000), (1.5, 1000))
    """
    if entry is None:
        return weight, ts
    value, at = entry
    if ts >= at:
        return value * math.exp((at - ts) * rate) + weight, ts
    return value + weight * math.exp((ts - at) * rate), at


class DecayedCounts:
    """Counts that halve every ``half_life_ms`` of event time, bounded in size."""

    def __init__(self, half_life_ms: float, max_items: int = 200_000) -> None:
        self.half_life_ms = half_life_ms
        self.max_items = max_items
        self._values: dict[str, tuple[float, int]] = {}

    def add(self, key: str, ts: int, weight: float = 1.0) -> None:
        self._values[key] = _plus(self._values.get(key), ts, weight, rate_per_ms(self.half_life_ms / 1000))
        if len(self._values) > self.max_items:
            self._forget()

    def add_each(self, keys: Sequence[str], ts: int) -> None:
        """``add(key, ts)`` for every key (a search's impressions: one call per list, not per item)."""
        values, rate = self._values, rate_per_ms(self.half_life_ms / 1000)
        for key in keys:
            values[key] = _plus(values.get(key), ts, 1.0, rate)
        if len(values) > self.max_items:
            self._forget()

    def _forget(self) -> None:
        """Forget the weaker half, rarely."""
        keep = sorted(self._values.items(), key=lambda kv: kv[1][0], reverse=True)
        self._values = dict(keep[: self.max_items // 2])

    def many(self, keys: Sequence[str], ts: int) -> list[float]:
        """``get`` of each key (one call per list: this runs for every item of every search)."""
        rate, exp = rate_per_ms(self.half_life_ms / 1000), math.exp
        return [0.0 if entry is None else entry[0] if ts <= entry[1] else entry[0] * exp((entry[1] - ts) * rate)
                for entry in map(self._values.get, keys)]

    def get(self, key: str, ts: int) -> float:
        entry = self._values.get(key)
        if entry is None:
            return 0.0
        value, at = entry
        return value if ts <= at else value * factor(ts - at, self.half_life_ms / 1000)


@dataclass
class RegionStats:
    """A region's items: decayed popularity (by grade), impressions and clicks, and last prices."""

    popularity: DecayedCounts
    impressions: DecayedCounts
    clicks: DecayedCounts
    prices: dict[str, float]
    max_prices: int

    @classmethod
    def new(cls, half_life_ms: float, max_items: int) -> RegionStats:
        return cls(*(DecayedCounts(half_life_ms, max_items) for _ in range(3)), {}, max_items)

    def remember_prices(self, items: Sequence[str], prices: Sequence[float]) -> None:
        """The last price seen for each item (bounded: past the cap the half seen first is forgotten)."""
        self.prices.update(zip(items, prices, strict=False))
        if len(self.prices) > self.max_prices:
            self.prices = dict(list(self.prices.items())[self.max_prices // 2:])


class _Lru(OrderedDict):
    """An OrderedDict that forgets its least recently touched keys beyond ``limit``."""

    def __init__(self, limit: int = 0) -> None:  # the default lets pickle rebuild it (limit comes back with it)
        super().__init__()
        self.limit = limit

    def touch(self, key: str, make: Any) -> Any:
        value = self.get(key)
        if value is None:
            value = self[key] = make()
            if len(self) > self.limit:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value


@functools.cache
def _positions(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``position_inverse`` and ``position_fraction`` columns of a list of ``n`` (one per length)."""
    return tuple(1.0 / (1 + p) for p in range(n)), tuple(p / max(n - 1, 1) for p in range(n))


def _within2(values: list[float]) -> list[float]:
    """Each value clamped to ±2 (comparisons, not ``max(min())``: this runs for every item of every search).

    >>> _within2([-3.0, 0.5, 2.5])
    [-2.0, 0.5, 2.0]
    """
    return [v if -2.0 <= v <= 2.0 else (2.0 if v > 0.0 else -2.0) for v in values]


@functools.lru_cache(maxsize=4096)
def _offsets(n: int, last_pos: int) -> tuple[float, ...]:
    """The ``offset_from_last_touched`` column: each position's distance from ``last_pos``, within ±5."""
    return tuple(max(-5, min(5, p - last_pos)) / 5 for p in range(n))


def _rank_fraction(values: Sequence[float]) -> list[float]:
    """Each value's ascending rank scaled to 0..1 (ties share the lower rank).

    >>> _rank_fraction([3.0, 1.0, 3.0])
    [0.5, 0.0, 0.5]
    """
    ordered = sorted(values)
    ordered.reverse()  # so a tie's lowest rank is the one written last
    first = dict(zip(ordered, _descending_ranks(len(values)), strict=True))
    return list(map(first.__getitem__, values))


@functools.cache
def _descending_ranks(n: int) -> tuple[float, ...]:
    """The ranks ``n - 1 .. 0`` scaled to 0..1, as ``_rank_fraction`` reads them (one per length)."""
    top = max(n - 1, 1)
    return tuple(rank / top for rank in range(n - 1, -1, -1))


class ContextState:
    """Session, user and popularity state, updated from the stream in event-time order."""

    def __init__(self, popularity_half_life_s: float = POPULARITY_HALF_LIFE_S, freshness_s: float = 600,
                 max_sessions: int = 100_000, max_users: int = 100_000, max_regions: int = 1_000,
                 max_items_per_region: int = 100_000) -> None:
        self.freshness_ms = freshness_s * 1000
        self.sessions: _Lru = _Lru(max_sessions)
        self.users: _Lru = _Lru(max_users)
        self.regions: _Lru = _Lru(max_regions)  # region -> RegionStats
        self._half_life_ms = popularity_half_life_s * 1000
        self._max_items = max_items_per_region

    def _region(self, region: str) -> RegionStats:
        return self.regions.touch(region, lambda: RegionStats.new(self._half_life_ms, self._max_items))

    def observe(self, event: dict[str, Any]) -> None:
        """Learn from a search (what was shown), a click or a purchase."""
        session: Session = self.sessions.touch(event["session_id"], Session)
        session.last_ts = event["ts"]
        stats = self._region(event["region"])
        if event["type"] == "search":
            results = event.get("results", ())
            session.searches += len(results) > 1
            session.shown.update(results)
            stats.impressions.add_each(results, event["ts"])
            if event.get("prices"):
                stats.remember_prices(results, event["prices"])
            if len(results) == 1 and event.get("query"):  # a search naming one item: the user asked for it
                session.searched[results[0]] = event["ts"]
            return
        item, ts = event["item_id"], event["ts"]
        if event.get("price"):
            stats.remember_prices((item,), (event["price"],))
        if stats.prices.get(item):
            session.log_prices = [*session.log_prices[-19:], math.log(stats.prices[item])]
        grade = GRADES[event.get("kind", "click") if event["type"] == "click" else "purchase"]
        touch = session.touches.get(item)
        if touch is None:
            touch = session.touches[item] = Touch(ts, 0, grade)
        touch.last_ts, touch.count, touch.grade = max(ts, touch.last_ts), touch.count + 1, max(grade, touch.grade)
        if grade >= GRADES["click"]:
            touch.clicks += 1
            session.last_click = item
            stats.clicks.add(item, ts)
        history = self.users.touch(event["user_id"], dict)
        history[item] = history.get(item, 0) + grade
        stats.popularity.add(item, ts, grade)

    def session_items(self, session_id: str) -> list[str]:
        """Items the session touched, most recent first."""
        touches = self.sessions[session_id].touches if session_id in self.sessions else {}
        return sorted(touches, key=lambda i: touches[i].last_ts, reverse=True)

    @staticmethod
    def _prices(items: list[str], shown: list[float] | None, stats: RegionStats | None) -> list[float]:
        """The search's own ``prices`` when it carries them, else the last price seen per item (0: unknown)."""
        if shown and len(shown) == len(items):
            return shown
        return [stats.prices.get(item, 0.0) if stats else 0.0 for item in items]

    @staticmethod
    def _price_features(prices: list[float]) -> tuple[list[float], list[float]]:
        """Price rank in the list and log price against the list median (unknown prices: neutral)."""
        known = [p for p in prices if p > 0]
        if not known:
            return [0.5] * len(prices), [0.0] * len(prices)
        known.sort()
        median = known[len(known) // 2]
        rank = _rank_fraction(prices if len(known) == len(prices) else [p if p > 0 else median for p in prices])
        return rank, _within2([math.log(p / median) if p > 0 else 0.0 for p in prices])

    def features(self, search: dict[str, Any]) -> list[list[float]]:
        """One row of ``FEATURES`` per result of ``search``, as of its ``ts``.

        Built a column at a time: most columns are constant over the list or one
        comprehension (they run in C), and only the few items the session touched
        need a value of their own; the rows are the columns zipped.
        """
        items: list[str] = list(search.get("results", ()))
        n, ts = len(items), search["ts"]
        session: Session = self.sessions.get(search["session_id"]) or Session()
        touches = session.touches
        recency = {item: rank for rank, item in enumerate(self.session_items(search["session_id"]))}
        touched_here = [p for p, item in enumerate(items) if item in touches]
        last_pos = min(touched_here, key=lambda p: recency[items[p]]) if touched_here else None
        stats = self.regions.get(search["region"])
        prices = self._prices(items, search.get("prices"), stats)
        price_rank, price_gap = self._price_features(prices)
        session_price = sum(session.log_prices) / len(session.log_prices) if session.log_prices else None
        idle = math.log1p(max(0, ts - session.last_ts) / 1000) / 10 if session.last_ts is not None else -0.1
        zeros = [0.0] * n
        region_pop = stats.popularity.many(items, ts) if stats else zeros
        region_rank = _rank_fraction([-p for p in region_pop])
        impressions = stats.impressions.many(items, ts) if stats else zeros
        item_clicks = stats.clicks.many(items, ts) if stats else zeros
        user = self.users.get(search["user_id"], {})
        last_clicked = last_pos is not None and touches[items[last_pos]].clicks > 0
        shown, searched, last_click = session.shown, session.searched, session.last_click
        log1p, log, exp = math.log1p, math.log, math.exp

        # the columns of the items the session touched (the rest stay 0)
        touched, count, recent, latest, fresh, grade, clicks, age = ([0.0] * n for _ in range(8))
        for p in touched_here:
            touch = touches[items[p]]
            age_ms, rank = max(0, ts - touch.last_ts), recency[items[p]]
            touched[p], count[p], recent[p], latest[p] = 1.0, log1p(touch.count), 1.0 / (1 + rank), float(rank == 0)
            fresh[p], grade[p] = exp(-age_ms / self.freshness_ms), touch.grade / 4
            clicks[p], age[p] = log1p(touch.clicks), log1p(age_ms / 1000) / 10
        after_last = [0.0] * n
        if last_pos is None:
            offset = zeros
        else:
            offset = _offsets(n, last_pos)
            if last_pos + 1 < n:
                after_last[last_pos + 1] = 1.0
        # the session rule: touched items first, most recent first, then the rest in the shown order
        inverse = _positions(n)[0]
        if touched_here:
            by_rule = sorted(touched_here, key=lambda p: (recency[items[p]], p))
            by_rule += [p for p in range(n) if items[p] not in touches]
            rule = [0.0] * n
            for p, value in zip(by_rule, inverse, strict=True):
                rule[p] = value
        else:  # nothing touched: the shown order itself
            rule = list(inverse)
        columns = [
            *_positions(n), price_rank, price_gap,
            touched, count, recent, latest, fresh, grade,
            after_last, offset, [float(last_pos is not None)] * n,
            list(map(log1p, region_pop)), [1.0 - r for r in region_rank],
            list(map(log1p, map(user.get, items, repeat(0)))),
            [log1p(len(touches))] * n, [n / 25] * n,
            list(map(log1p, map(shown.get, items, repeat(0)))),
            clicks,
            zeros if last_click is None else list(map(float, map(last_click.__eq__, items))),
            [(c + 0.1) / (i + 1.0) for c, i in zip(item_clicks, impressions, strict=True)],
            list(map(log1p, impressions)),
            [0.0 if last_pos is None else last_pos / max(n, 1)] * n,
            age, rule, [float(last_clicked)] * n,
            list(map(float, map(searched.__contains__, items))) if searched else zeros,
            offset if last_clicked else zeros,
            _within2([log(price) - session_price if price else 0.0 for price in prices]) if session_price else zeros,
            [idle] * n, [log1p(session.searches)] * n, [float(search.get("device") == "mobile")] * n,
            [log1p(len(search.get("filters") or ()))] * n,
        ]
        return list(map(list, zip(*columns, strict=True)))
