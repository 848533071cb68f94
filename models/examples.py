"""Labelled ranking examples: each search joined with what followed it.

A search becomes a pending example the moment it arrives, with its features
snapshotted from ``ContextState`` *before* any later event is applied (point in
time: its own clicks are never in its features). Clicks, carts and purchases
that follow it raise the grade of the item they name, matched by
``search_id``, else by session and item within ``join_window_s``. Once the
watermark passes the search time plus ``wait_s`` the example is final and goes
into a batch; batches leave through ``emit`` by size or age (age is checked
whenever events arrive, and ``close`` flushes the rest).

The watermark is the event time every active source (a topic partition, as the
worker's pipeline marks each event; else the event type) has reached: the slowest
one's latest event time. A topic read behind the others would otherwise see its
clicks arrive after their searches were closed unlabelled. A source silent for
``idle_s`` of wall time (a shop that sends no purchases) stops holding it back.
Events wait in a buffer until the watermark passes them, then apply in event-time
order (searches before what follows them at the same time).

>>> import asyncio
>>> batches = []
>>> async def emit(batch): batches.append(batch)
>>> builder = ExamplesBuilder(emit, wait_s=5, batch_size=1, sources=("search", "click"))
>>> base = {"ts": 1_000, "session_id": "s", "user_id": "u", "region": "FR"}
>>> asyncio.run(builder.process([
...     {**base, "type": "search", "event_id": "1", "search_id": "q1", "results": ["a", "b"]},
...     {**base, "type": "click", "event_id": "2", "item_id": "b", "kind": "cart", "search_id": "q1"},
...     {**base, "type": "click", "event_id": "3", "ts": 2_000, "item_id": "a", "kind": "view"}]))
>>> batches  # the view at 2 s is within the 5 s wait: the search stays open
[]
>>> asyncio.run(builder.close())
>>> batches[0][0]["items"], batches[0][0]["labels"]
(['a', 'b'], [1, 3])
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from relevo.features.context import GRADES, ContextState
from relevo.streams.events import EVENT_TYPES, Event
from relevo.streams.pipeline import SOURCE

log = logging.getLogger(__name__)

Example = dict[str, Any]
_ORDER = {"search": 0, "click": 1, "purchase": 2}  # at equal times a search precedes what follows it
Emit = Callable[[list[Example]], Awaitable[None]]
History = Callable[[], Awaitable[list[Event]]]
EXAMPLES_PER_RECORD = 64  # a labelled list carries a feature row per item: records stay well under 1 MiB


def record_emitter(send: Callable[[bytes], Awaitable[object]]) -> Emit:
    """The ``emit`` that writes a batch through ``send`` as JSON-array records of at most
    ``EXAMPLES_PER_RECORD`` examples (what ``train.batches`` carries to the trainer)."""
    async def emit(batch: list[Example]) -> None:
        for start in range(0, len(batch), EXAMPLES_PER_RECORD):
            await send(orjson.dumps(batch[start:start + EXAMPLES_PER_RECORD]))
    return emit


@dataclass
class _Pending:
    example: Example
    session_id: str
    labels: list[int] = field(default_factory=list)


class ExamplesBuilder:
    """A ``BatchProcessor`` turning searches and their outcomes into labelled lists."""

    name = "examples"

    def __init__(self, emit: Emit, *, wait_s: float = 10.0, join_window_s: float = 1800.0,
                 batch_size: int = 256, batch_age_s: float = 5.0, state: ContextState | None = None,
                 remember_events: int = 200_000, idle_s: float = 5.0,
                 sources: Sequence[str] = EVENT_TYPES, history: History | None = None) -> None:
        self.emit = emit
        self.wait_ms = int(wait_s * 1000)
        self.join_window_ms = int(join_window_s * 1000)
        self.batch_size = batch_size
        self.batch_age_s = batch_age_s
        self.state = state or ContextState()
        self.idle_s = idle_s
        self._history = history  # read once, before the first batch: what a restarted worker had
        # event type -> (latest event time, wall time last seen); every source counts from the start,
        # so a topic read late at start-up cannot have its searches closed before its clicks arrive
        self._sources: dict[str, tuple[int, float]] = dict.fromkeys(sources, (0, time.monotonic()))
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # by search_id, in arrival order
        self._by_session: dict[str, list[str]] = {}  # session -> its pending search ids
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember_events
        self._batch: list[Example] = []
        self._batch_started = 0.0
        self._waiting: list[tuple[int, int, int, Event]] = []  # a heap by (ts, type order, arrival)
        self._arrivals = itertools.count()

    async def process(self, events: Sequence[Event]) -> None:
        """Take a batch; apply, in event-time order, every event the watermark has passed.

        Events wait in a buffer until every active source has reached their time, so a
        click read before its search (the click topic ahead) neither misses its search nor
        leaks into the search's features. Redelivered event ids are ignored.
        """
        if self._history is not None:
            history, self._history = self._history, None
            await self._restore(history)
        for event in events:
            if event["event_id"] in self._seen:
                continue
            self._seen[event["event_id"]] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            source = event.get(SOURCE, event["type"])
            latest, _ = self._sources.get(source, (0, 0.0))
            self._sources[source] = (max(latest, event["ts"]), time.monotonic())
            heapq.heappush(self._waiting, (event["ts"], _ORDER.get(event["type"], 9), next(self._arrivals), event))
        watermark = self.watermark()
        self._apply_until(watermark)
        self._finalise(watermark - self.wait_ms)
        await self._flush(force=False)

    async def _restore(self, history: History) -> None:
        """Rebuild what a worker that stopped had: context from its committed events, and the
        searches that may still have been waiting for outcomes (re-opened from the last
        ``wait_s`` plus a minute of them; an example already sent is skipped by the trainer)."""
        try:
            events = sorted(await history(), key=lambda e: (e["ts"], _ORDER.get(e["type"], 9)))
        except Exception:  # context is an optimisation: a failed restore must not stop the worker
            log.exception("could not read the committed history; sessions start empty")
            return
        if not events:
            return
        cutoff = events[-1]["ts"] - self.wait_ms - 60_000
        reopen = [e for e in events if e["ts"] >= cutoff]
        for event in events[: len(events) - len(reopen)]:
            self.state.observe(event)
        await self.process(reopen)
        log.info("restored context from %d committed events, %d of them re-applied", len(events), len(reopen))

    def _apply_until(self, watermark: int | None) -> None:
        while self._waiting and (watermark is None or self._waiting[0][0] <= watermark):
            event = heapq.heappop(self._waiting)[-1]
            if event["type"] == "search":
                self._open(event)
            else:
                self._label(event)
            self.state.observe(event)

    def watermark(self) -> int:
        """Event time (epoch ms) every source still sending has reached; 0 before any event."""
        now = time.monotonic()
        active = [ts for ts, seen in self._sources.values() if now - seen <= self.idle_s]
        return min(active, default=max((ts for ts, _ in self._sources.values()), default=0))

    async def close(self) -> None:
        """Apply every waiting event, finalise every pending search and emit what is left."""
        self._apply_until(None)
        self._finalise(None)
        await self._flush(force=True)

    def _open(self, search: Event) -> None:
        results = list(search.get("results", ()))
        if len(results) < 2:  # a single result teaches nothing about order
            return
        example = {key: search.get(key) for key in ("search_id", "ts", "user_id", "session_id",
                                                    "region", "locale", "query")}
        example.update(items=results, features=self.state.features(search))
        self._pending[search["search_id"]] = _Pending(example, search["session_id"], [0] * len(results))
        self._by_session.setdefault(search["session_id"], []).append(search["search_id"])

    def _label(self, event: Event) -> None:
        grade = GRADES[event.get("kind", "click") if event["type"] == "click" else "purchase"]
        pending = self._pending.get(event.get("search_id") or "")
        if pending is None:  # no search id: the latest open search of this session that showed the item
            for search_id in reversed(self._by_session.get(event["session_id"], [])):
                candidate = self._pending[search_id]
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
        """Move searches older than ``until_ts`` (all when None) into the outgoing batch."""
        while self._pending:
            search_id, pending = next(iter(self._pending.items()))
            if until_ts is not None and pending.example["ts"] > until_ts:
                break
            del self._pending[search_id]
            session = self._by_session[pending.session_id]
            session.remove(search_id)
            if not session:
                del self._by_session[pending.session_id]
            if not self._batch:
                self._batch_started = time.monotonic()
            self._batch.append({**pending.example, "labels": pending.labels})

    async def _flush(self, force: bool) -> None:
        while self._batch and (force or len(self._batch) >= self.batch_size
                               or time.monotonic() - self._batch_started >= self.batch_age_s):
            batch, self._batch = self._batch[: self.batch_size], self._batch[self.batch_size:]
            self._batch_started = time.monotonic()
            log.debug("emitting %d examples", len(batch))
            await self.emit(batch)
