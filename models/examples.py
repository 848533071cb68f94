"""Labelled ranking examples: each search joined with what followed it.

``ExamplesBuilder`` is a region operator (``relevo.streams.regions``): it runs on one
partition of the region stream, whose events arrive in one deterministic event-time
order whatever worker forwarded them and whatever order the topics were read in, so
the examples (and their features) are the same with one worker or ten.

A search becomes a pending example the moment it is applied, with its features
snapshotted from the partition's ``ContextState`` *before* any later event is applied
(point in time: its own clicks are never in its features), as a float32 array of one row
per item: what the ranker reads, and a pending example is in every snapshot of its
partition, where one array pickles as a copy and its floats one by one took most of the
time. A search that arrives after its own session's click at or after its time (its
record was still in flight when the merge moved past it) would carry that outcome in its
features, which serving never sees: it makes no example (``after_outcome`` counts them).
Clicks, carts and purchases that follow it raise the grade of the item they name, matched by
``search_id``, else by session and item within ``join_window_s``. Once the stream has
passed the search time plus ``wait_s`` the example is final (when every source has
gone idle, all are); finals leave through ``emit`` in batches, by size or age. The
whole state (context, open searches, the batch being filled) is the operator's
``state``, snapshotted with its partition, so a restart loses and repeats nothing it
had not already sent (a search sent twice is skipped by the trainer).

>>> import asyncio
>>> batches = []
>>> async def emit(batch): batches.append(batch)
>>> builder = ExamplesBuilder(emit, wait_s=5, batch_size=1)
>>> base = {"ts": 1_000, "session_id": "s", "user_id": "u", "region": "FR"}
>>> builder.apply([
...     {**base, "type": "search", "event_id": "1", "search_id": "q1", "results": ["a", "b"]},
...     {**base, "type": "click", "event_id": "2", "item_id": "b", "kind": "cart", "search_id": "q1"},
...     {**base, "type": "click", "event_id": "3", "ts": 2_000, "item_id": "a", "kind": "view"}],
...     horizon=2_001, reach=2_001)
>>> asyncio.run(builder.flush()); batches  # the view at 2 s is within the 5 s wait: the search stays open
[]
>>> builder.apply([], horizon=float("inf"), reach=2_001)  # every source idle: nothing more can come
>>> asyncio.run(builder.flush()); batches[0][0]["items"], batches[0][0]["labels"]
(['a', 'b'], [1, 3])
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from relevo.features.context import GRADES, POPULARITY_HALF_LIFE_S, ContextState
from relevo.streams.events import Event
from relevo.streams.regions import RegionPartition, region_partition

log = logging.getLogger(__name__)

Example = dict[str, Any]
Emit = Callable[[list[Example]], Awaitable[None]]
EXAMPLES_PER_RECORD = 64  # a labelled list carries a feature row per item: records stay well under 1 MiB


def encode_examples(examples: Sequence[Example]) -> bytes:
    """Examples as ``train.batches`` carries them: a JSON array, each feature row a list of numbers."""
    return orjson.dumps(examples, option=orjson.OPT_SERIALIZE_NUMPY)


def record_emitter(send: Callable[[bytes], Awaitable[object]]) -> Emit:
    """The ``emit`` that writes a batch through ``send`` as JSON-array records of at most
    ``EXAMPLES_PER_RECORD`` examples (what ``train.batches`` carries to the trainer)."""
    async def emit(batch: list[Example]) -> None:
        for start in range(0, len(batch), EXAMPLES_PER_RECORD):
            await send(encode_examples(batch[start:start + EXAMPLES_PER_RECORD]))
    return emit


@dataclass
class _Pending:
    example: Example
    session_id: str
    labels: list[int] = field(default_factory=list)


@dataclass
class BuilderState:
    """Everything a restart must keep (picklable)."""

    context: ContextState = field(default_factory=ContextState)
    pending: OrderedDict[str, _Pending] = field(default_factory=OrderedDict)  # by search_id, in event time
    by_session: dict[str, list[str]] = field(default_factory=dict)  # session -> its pending search ids
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)  # event ids applied (duplicates sent twice)
    batch: list[Example] = field(default_factory=list)  # finals not yet emitted
    after_outcome: int = 0  # searches applied after their session's later clicks: no example


class ExamplesBuilder:
    """The region operator turning searches and their outcomes into labelled lists."""

    name = "examples"

    def __init__(self, emit: Emit, *, wait_s: float = 10.0, join_window_s: float = 1800.0,
                 batch_size: int = 256, batch_age_s: float = 5.0, remember_events: int = 100_000,
                 popularity_half_life_s: float = POPULARITY_HALF_LIFE_S) -> None:
        self.emit = emit
        self.wait_ms = int(wait_s * 1000)
        self.join_window_ms = int(join_window_s * 1000)
        self.batch_size, self.batch_age_s, self.remember = batch_size, batch_age_s, remember_events
        self.state = BuilderState(ContextState(popularity_half_life_s))
        self._batch_started = time.monotonic()

    @property
    def context(self) -> ContextState:
        return self.state.context

    def apply(self, events: Sequence[Event], horizon: float, reach: int) -> None:
        """Apply events (in event-time order); finalise the searches the stream has moved past."""
        for event in _first_sight(self.state, events, self.remember):
            # what the stream has moved past is final before the next event: batch boundaries never matter
            self._finalise(event["ts"] - self.wait_ms)
            if event["type"] == "search":
                if self._after_outcome(event):
                    self.state.after_outcome += 1
                else:
                    self._open(event)
            else:
                self._label(event)
            self.state.context.observe(event)
        if horizon == float("inf"):
            self._finalise(None)
        elif horizon != float("-inf"):
            self._finalise(int(horizon) - self.wait_ms)

    def _after_outcome(self, search: Event) -> bool:
        """Whether the search's session already has a click or purchase at or after its time."""
        session = self.state.context.sessions.get(search["session_id"])
        return session is not None and any(t.last_ts >= search["ts"] for t in session.touches.values())

    def _open(self, search: Event) -> None:
        results = list(search.get("results", ()))
        if len(results) < 2:  # a single result teaches nothing about order
            return
        if search["search_id"] in self.state.pending:  # a search id sent twice: the list shown first keeps it
            return
        example = {key: search.get(key) for key in ("search_id", "ts", "user_id", "session_id",
                                                    "region", "locale", "query")}
        example.update(items=results, features=np.array(self.state.context.features(search), dtype=np.float32))
        self.state.pending[search["search_id"]] = _Pending(example, search["session_id"], [0] * len(results))
        self.state.by_session.setdefault(search["session_id"], []).append(search["search_id"])

    def _label(self, event: Event) -> None:
        grade = GRADES[event.get("kind", "click") if event["type"] == "click" else "purchase"]
        pending = self.state.pending.get(event.get("search_id") or "")
        if pending is None:  # no search id: the latest open search of this session that showed the item
            for search_id in reversed(self.state.by_session.get(event["session_id"], [])):
                candidate = self.state.pending[search_id]
                if (event["item_id"] in candidate.example["items"]
                        and 0 <= event["ts"] - candidate.example["ts"] <= self.join_window_ms):
                    pending = candidate
                    break
        if pending is None or event["item_id"] not in pending.example["items"]:
            return
        for i, item in enumerate(pending.example["items"]):
            if item == event["item_id"]:
                pending.labels[i] = max(pending.labels[i], grade)

    def _finalise(self, until_ts: int | None) -> None:
        """Move searches before ``until_ts`` (all when None) into the outgoing batch."""
        state = self.state
        while state.pending:
            search_id, pending = next(iter(state.pending.items()))
            if until_ts is not None and pending.example["ts"] >= until_ts:
                break
            del state.pending[search_id]
            session = state.by_session[pending.session_id]
            session.remove(search_id)
            if not session:
                del state.by_session[pending.session_id]
            if not state.batch:
                self._batch_started = time.monotonic()
            state.batch.append({**pending.example, "labels": pending.labels})

    async def flush(self) -> None:
        """Emit full batches, and a partial one once it is ``batch_age_s`` old."""
        state = self.state
        while state.batch and (len(state.batch) >= self.batch_size
                               or time.monotonic() - self._batch_started >= self.batch_age_s):
            batch, state.batch = state.batch[: self.batch_size], state.batch[self.batch_size:]
            self._batch_started = time.monotonic()
            log.debug("emitting %d examples", len(batch))
            await self.emit(batch)


def _first_sight(state: BuilderState, events: Sequence[Event], remember: int) -> list[Event]:
    """The events whose ids ``state`` has not applied yet (a shop may send an event twice)."""
    fresh = []
    for event in events:
        if event["event_id"] not in state.seen:
            state.seen[event["event_id"]] = None
            fresh.append(event)
    while len(state.seen) > remember:
        state.seen.popitem(last=False)
    return fresh


class ExamplesContext:
    """The examples builder's ranking context, followed without building examples: what serving
    needs to compute a list's features exactly as the builder did (``RegionContexts``)."""

    name = ExamplesBuilder.name  # takes the builder's snapshotted state

    def __init__(self, remember_events: int = 100_000, popularity_half_life_s: float = POPULARITY_HALF_LIFE_S
                 ) -> None:
        self.state, self.remember = BuilderState(ContextState(popularity_half_life_s)), remember_events

    def apply(self, events: Sequence[Event], horizon: float, reach: int) -> None:
        for event in _first_sight(self.state, events, self.remember):
            self.state.context.observe(event)

    async def flush(self) -> None:
        """Nothing to send."""


class RegionContexts:
    """A copy of every region partition's ranking context, kept by ``follow_regions``."""

    def __init__(self, partitions: int, sources: Sequence[str], idle_ms: int = 5_000,
                 popularity_half_life_s: float = POPULARITY_HALF_LIFE_S) -> None:
        self.partitions, self.sources, self.idle_ms = partitions, list(sources), idle_ms
        self.popularity_half_life_s = popularity_half_life_s
        self._contexts: dict[int, ExamplesContext] = {}

    def make_state(self, partition: int, dump: Any | None) -> RegionPartition:
        follower = self._contexts[partition] = ExamplesContext(popularity_half_life_s=self.popularity_half_life_s)
        return RegionPartition(partition, [follower], self.sources, self.idle_ms, dump=dump)

    def for_region(self, region: str) -> ContextState:
        """The context that region's searches are ranked in (empty until its partition is followed)."""
        follower = self._contexts.get(region_partition(region, self.partitions))
        return follower.state.context if follower else ContextState(self.popularity_half_life_s)
