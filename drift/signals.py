"""Turning the event stream into observations per (region, metric).

Observations are per region (the global stream is combined from every region
partition's bucket aggregates, ``relevo.drift.combined``). Events arrive in event-time
order (``relevo.streams.eventtime``); windowing is in event time, driven by a clock that
only moves forward: the latest event's time, or the stream's horizon when it is later
(so a quiet region still closes its searches and minutes):

- ``ctr``: a search with results waits ``ctr_timeout_ms`` of event time for a
  click (or cart) naming its ``search_id``; then its outcome (1 clicked, 0 not)
  is observed. Outcomes are observed in search order, all after the same wait:
  emitting clicks at once and misses later would put misses in bursts, which
  detectors take for a change.
- ``click_rank``: ``1 / (position + 1)`` of each click that carries a position.
- ``volume``: events per bucket of ``bucket_ms``. Buckets close when the clock
  moves past them, so a region that falls silent reports zeros (at most
  ``max_gap`` of them per gap, so a replay over years does not emit millions).
- ``purchase_rate``: the share of purchases among the events of each closed,
  non-empty bucket (one observation per bucket, not per event: it is cheaper).

>>> s = Signals(ctr_timeout_ms=60_000)
>>> base = {"ts": 0, "region": "FR", "locale": "fr-FR", "user_id": "u", "session_id": "s"}
>>> obs = s.observe([
...     {**base, "type": "search", "event_id": "1", "search_id": "q1", "query": "plage", "results": ["a"]},
...     {**base, "type": "click", "event_id": "2", "search_id": "q1", "item_id": "a", "position": 1},
... ])
>>> sorted((m, v) for r, m, v, _ in obs)
[('click_rank', 0.5), ('query_language', 'fr')]
>>> later = s.observe([{**base, "type": "purchase", "event_id": "3", "ts": 200_000, "item_id": "a",
...                     "order_id": "o", "price": 1.0}])
>>> later[:4]  # the search's outcome, once its timeout passed; then the closed minutes
[('FR', 'ctr', 1.0, 0), ('FR', 'volume', 2.0, 0), ('FR', 'purchase_rate', 0.0, 0), ('FR', 'volume', 0.0, 60000)]
>>> quiet = Signals(ctr_timeout_ms=60_000)
>>> _ = quiet.observe([{**base, "type": "search", "event_id": "4", "search_id": "q2", "results": ["a"]}])
>>> [o for o in quiet.observe([], horizon=120_000) if o[1] == "ctr"]  # no events, but time moved on
[('FR', 'ctr', 0.0, 0)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from relevo.core.language import identify
from relevo.streams.events import Event

Observation = tuple[str, str, Any, int]  # region, metric, value, event time (ms)

CLICK_KINDS = ("click", "cart")  # a "view" is browsing, not a click-through


class Signals:
    """Stateful extraction of metric observations from batches of events (picklable)."""

    def __init__(self, ctr_timeout_ms: int = 10 * 60_000, bucket_ms: int = 60_000, max_gap: int = 60,
                 max_pending: int = 200_000, max_regions: int = 5_000) -> None:
        self.ctr_timeout_ms = ctr_timeout_ms
        self.bucket_ms = bucket_ms
        self.max_gap = max_gap
        self.max_pending = max_pending
        self.max_regions = max_regions
        self.clock = 0
        self._pending: OrderedDict[str, list[Any]] = OrderedDict()  # search_id -> [region, ts, clicked]
        # region -> [open bucket, events and purchases in it, empty buckets reported since its last event],
        # least recently seen first (capped)
        self._buckets: OrderedDict[str, list[int]] = OrderedDict()

    def observe(self, events: Sequence[Event], horizon: float = float("-inf")) -> list[Observation]:
        """Observations from events in event-time order, including searches that timed out and
        closed buckets; ``horizon`` is event time the whole stream has reached (may be later)."""
        out: list[Observation] = []
        for event in events:
            ts, region = event["ts"], event["region"]
            self.clock = max(self.clock, ts)
            self._expire(out)  # outcomes are final before the next event: batch boundaries never matter
            self._count(region, ts, event["type"] == "purchase", out)
            out.extend((region, metric, value, ts) for metric, value in self._values(event))
            self._track_search(event)
        if horizon != float("inf"):
            self.clock = max(self.clock, int(max(horizon, 0)))
        self._expire(out)
        closed = self.clock // self.bucket_ms - 1  # one bucket of grace for late events
        for where, (bucket, *_) in list(self._buckets.items()):
            if bucket < closed:
                self._advance(where, closed, out)
        return out

    @staticmethod
    def _values(event: Event) -> list[tuple[str, Any]]:
        """The (metric, value) pairs one event gives at once (ctr and the buckets come later)."""
        kind = event["type"]
        if kind == "search":
            language = identify(event.get("query", ""), event.get("locale", ""))
            return [("query_language", language.code)] if language else []
        values: list[tuple[str, Any]] = []
        if event.get("category"):
            values.append(("category", event["category"]))
        if kind == "click" and event.get("position") is not None and event.get("kind", "click") in CLICK_KINDS:
            values.append(("click_rank", 1.0 / (event["position"] + 1)))
        return values

    def _track_search(self, event: Event) -> None:
        if event["type"] == "search" and event.get("results"):
            self._pending[event["search_id"]] = [event["region"], event["ts"], 0.0]
            if len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)  # overload: forget the oldest rather than guess
        elif event["type"] == "click" and event.get("kind", "click") in CLICK_KINDS:
            pending = self._pending.get(event.get("search_id") or "")
            if pending is not None:
                pending[2] = 1.0

    def _expire(self, out: list[Observation]) -> None:
        deadline = self.clock - self.ctr_timeout_ms
        while self._pending:
            search_id, (region, ts, clicked) = next(iter(self._pending.items()))
            if ts >= deadline:
                break
            del self._pending[search_id]
            out.append((region, "ctr", clicked, ts))

    def _count(self, region: str, ts: int, purchase: bool, out: list[Observation]) -> None:
        bucket = ts // self.bucket_ms
        state = self._buckets.get(region)
        if state is None:
            state = self._buckets[region] = [bucket, 0, 0, 0]
            if len(self._buckets) > self.max_regions:  # a flood of region codes: forget the stalest
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(region)
        if bucket > state[0]:
            self._advance(region, bucket, out)
        state[1] += 1  # late events count in the open bucket: they arrived now
        state[2] += purchase

    def _advance(self, region: str, bucket: int, out: list[Observation]) -> None:
        """Close the open bucket and the empty ones up to ``bucket``, which becomes the open one.

        Zeros are capped per silence, not per call: how far the horizon moved at each
        batch must not change how many a silent region reports.
        """
        state = self._buckets[region]
        opened, events, purchases, silent = state
        ts = opened * self.bucket_ms
        if events:
            out.append((region, "volume", float(events), ts))
            out.append((region, "purchase_rate", purchases / events, ts))
            silent = 0
        elif silent < self.max_gap:
            out.append((region, "volume", 0.0, ts))
            silent += 1
        zeros = max(0, min(bucket - opened - 1, self.max_gap - silent))
        out.extend((region, "volume", 0.0, ts + gap * self.bucket_ms) for gap in range(1, zeros + 1))
        state[:] = bucket, 0, 0, silent + zeros
