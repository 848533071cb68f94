"""Event time: the one mechanism every operator that joins or orders events from several
sources uses (a source is one topic partition, ``events.click:3``).

- ``SourceClock`` is one source's watermark: the event time it has reached. A few wild
  timestamps cannot push it: a jump of more than ``max_jump_ms`` counts only once
  ``confirm`` events in a row agree (a shop resuming after a pause), so one event stamped
  tomorrow neither moves the stream clock nor decays every feature.
- ``Mark`` is what the reader of a source reports about it: its watermark, how many
  records it still has to read (``lag``), and when it said so (``at``, its wall clock).
- ``EventTimeMerge`` takes events from many sources in whatever order they arrive and
  hands them out in one deterministic order, ``(ts, type, event_id)``, once every source
  still sending has reached their time: the slowest source's watermark is the merge's
  watermark. A source that has read everything (``lag == 0``) and whose watermark has
  not moved for ``idle_ms`` (measured by its marks' own ``at``, so a replay of the same
  records decides the same) stops holding the others back; a source never heard of
  holds them until it reports. Events are de-duplicated by their position in their
  source, so a redelivery after a crash changes nothing.

>>> merge = EventTimeMerge(["search:0", "click:0"], idle_ms=1000)
>>> merge.push("click:0", (7, 0), {"type": "click", "ts": 20, "event_id": "c"})
True
>>> merge.mark("click:0", Mark(watermark=40, lag=2, at=0)); merge.ready()  # the search source holds it
[]
>>> merge.push("search:0", (3, 0), {"type": "search", "ts": 10, "event_id": "s"})
True
>>> merge.mark("search:0", Mark(watermark=30, lag=5, at=0))
>>> [e["event_id"] for e in merge.ready()]  # the click comes after the search it followed
['s', 'c']
>>> merge.push("search:0", (3, 0), {"type": "search", "ts": 10, "event_id": "s"})  # redelivered
False
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

Event = dict[str, Any]
SOURCE, POSITION = "_source", "_pos"  # transport metadata the worker's pipeline adds to each event
Position = tuple[int, int]  # (offset of the record in its partition, index of the event in the record)
TYPE_ORDER = {"search": 0, "click": 1, "purchase": 2}  # at equal times a search precedes what follows it


def source_of(topic: str, partition: int) -> str:
    """The name of a source: one partition of one topic."""
    return f"{topic}:{partition}"


def stamp(events: list[Event], topic: str, partition: int, offset: int) -> list[Event]:
    """Mark the events of one record with their source and position (offset, index in the record).

    >>> stamp([{"event_id": "a"}, {"event_id": "b"}], "events.click", 3, 41)[1]
    {'event_id': 'b', '_source': 'events.click:3', '_pos': (41, 1)}
    """
    source = source_of(topic, partition)
    for index, event in enumerate(events):
        event[SOURCE], event[POSITION] = source, (offset, index)
    return events


_first = itemgetter(0)


def _ts(held: tuple[tuple[int, int, str], Event]) -> int:
    return held[0][0]


def order_key(event: Event) -> tuple[int, int, str]:
    """The merge's order: event time, then searches before clicks before purchases, then id."""
    return event["ts"], TYPE_ORDER.get(event["type"], 9), event["event_id"]


@dataclass
class SourceClock:
    """One source's watermark, robust to a few wild timestamps.

    >>> clock = SourceClock(max_jump_ms=1000, confirm=2)
    >>> for ts in (100, 200, 86_400_000, 300):  # one event stamped a day ahead
    ...     clock.observe(ts)
    >>> clock.watermark
    300
    >>> for ts in (90_000, 90_100):  # two in a row: the stream really moved on
    ...     clock.observe(ts)
    >>> clock.watermark
    90000
    """

    max_jump_ms: int = 3_600_000
    confirm: int = 3
    watermark: int | None = None
    _ahead: list[int] = field(default_factory=list)

    def observe(self, ts: int) -> None:
        if self.watermark is None:
            self.watermark = ts
        elif ts - self.watermark <= self.max_jump_ms:
            self._ahead.clear()
            self.watermark = max(self.watermark, ts)
        else:
            self._ahead.append(ts)
            if len(self._ahead) >= self.confirm:
                self.watermark = min(self._ahead)
                self._ahead.clear()


@dataclass(frozen=True)
class Mark:
    """What a source's reader reports: watermark (None before any event), records left, wall time (ms)."""

    watermark: int | None
    lag: int | None  # None: unknown, so the source counts as still reading
    at: int


@dataclass
class _Source:
    mark: Mark | None = None
    still_since: int = 0  # ``at`` of the mark since which the source has been caught up and unmoved
    received: Position = (-1, -1)


class EventTimeMerge:
    """Events of many sources, released in ``order_key`` order behind the sources' watermarks."""

    def __init__(self, sources: Iterable[str] = (), idle_ms: int = 5_000) -> None:
        self.idle_ms = idle_ms
        self.sources: dict[str, _Source] = {s: _Source() for s in sources}
        self.late = 0  # events that arrived after the merge had passed their time (applied at once)
        self._held: list[tuple[tuple[int, int, str], Event]] = []  # sorted when released (timsort: mostly runs)
        self._last: tuple[int, int, str] | None = None
        self.clock = 0  # event time of the latest event released (never ahead of a robust watermark)
        self.left: int | None = None  # event time of the first event the last ``ready(limit)`` held back

    def __len__(self) -> int:
        return len(self._held)

    def mark(self, source: str, mark: Mark) -> None:
        state = self.sources.setdefault(source, _Source())
        before = state.mark
        still = before is not None and before.watermark == mark.watermark and before.lag == 0 == mark.lag
        if not still:
            state.still_since = mark.at
        state.mark = mark

    def push(self, source: str, position: Position, event: Event) -> bool:
        """Buffer ``event``; False (and ignored) when its position was already received."""
        state = self.sources.get(source) or self.sources.setdefault(source, _Source())  # no _Source per event
        if position <= state.received:
            return False
        state.received = position
        key = order_key(event)
        if self._last is not None and key < self._last:
            self.late += 1
        self._held.append((key, event))
        return True

    def drained(self) -> bool:
        """Every source idle and nothing held: all that was sent is released."""
        return not self._held and self.watermark() == float("inf")

    def _idle(self, state: _Source) -> bool:
        mark = state.mark
        return mark is not None and mark.lag == 0 and mark.at - state.still_since >= self.idle_ms

    def watermark(self) -> float | None:
        """Event time every source still sending has reached (inf when all are idle; None when
        a source still sending has not reported a watermark yet)."""
        holding = [s.mark.watermark if s.mark else None for s in self.sources.values() if not self._idle(s)]
        if not holding:
            return float("inf")
        if None in holding:
            return None
        return min(holding)  # type: ignore[type-var]

    def horizon(self) -> float:
        """``watermark()`` as a number: -inf while unknown, inf once every source is idle."""
        watermark = self.watermark()
        return float("-inf") if watermark is None else watermark

    @property
    def reach(self) -> int:
        """The furthest event time any source's (robust) watermark has reached."""
        return max((s.mark.watermark for s in self.sources.values() if s.mark and s.mark.watermark is not None),
                   default=self.clock)

    def ready(self, limit: int | None = None) -> list[Event]:
        """The buffered events the watermark has passed, in ``order_key`` order (at most ``limit``
        of them: ``left`` then says when the rest begins, else it is None)."""
        self.left = None
        watermark = self.watermark()
        if watermark is None or not self._held:
            return []
        held = self._held
        held.sort(key=_first)  # keys are unique (event ids are), so events never get compared
        cut = len(held) if watermark == float("inf") else bisect.bisect_left(held, watermark, key=_ts)
        if limit is not None and cut > limit:
            cut, self.left = limit, _ts(held[limit])
        if not cut:
            return []
        out = [event for _, event in held[:cut]]
        self._last = held[cut - 1][0] if self._last is None else max(self._last, held[cut - 1][0])
        del held[:cut]
        if out:
            ceiling = watermark if watermark != float("inf") else self.reach
            self.clock = max(self.clock, min(out[-1]["ts"], ceiling))
        return out


class SourceProgress:
    """Where a reader stands in each source it reads, as the ``Mark`` it reports for it.

    ``record`` and ``event`` are told about every record processed (rejects too) and every
    valid event; ``assigned()`` names the sources the reader owns, ``highwater(source)``
    the offset its partition's next record will get, and ``start`` the offset reading
    began at (set on assignment), for a source nothing was read from yet.

    >>> progress = SourceProgress(assigned=lambda: ["click:0", "click:1"], highwater={"click:0": 8, "click:1": 0}.get)
    >>> progress.record("click:0", 4); progress.event("click:0", 1_000)
    >>> progress.start["click:1"] = 0
    >>> progress.marks(at=5)
    {'click:0': Mark(watermark=1000, lag=3, at=5), 'click:1': Mark(watermark=None, lag=0, at=5)}
    """

    def __init__(self, assigned: Callable[[], Iterable[str]], highwater: Callable[[str], int | None],
                 max_jump_ms: int = 3_600_000) -> None:
        self.assigned, self.highwater, self.max_jump_ms = assigned, highwater, max_jump_ms
        self.start: dict[str, int] = {}
        self._processed: dict[str, int] = {}
        self._clocks: dict[str, SourceClock] = {}

    def record(self, source: str, offset: int) -> None:
        self._processed[source] = max(offset, self._processed.get(source, -1))

    def event(self, source: str, ts: int) -> None:
        clock = self._clocks.get(source)
        if clock is None:
            clock = self._clocks[source] = SourceClock(self.max_jump_ms)
        clock.observe(ts)

    def watermark(self, source: str) -> int | None:
        clock = self._clocks.get(source)
        return clock.watermark if clock else None

    def lag(self, source: str) -> int | None:
        """Records of ``source`` not yet processed (None while unknown)."""
        highwater = self.highwater(source)
        following = self._processed[source] + 1 if source in self._processed else self.start.get(source)
        if highwater is None or highwater < 0 or following is None:
            return None
        return max(0, highwater - following)

    def marks(self, at: int) -> dict[str, Mark]:
        return {s: Mark(self.watermark(s), self.lag(s), at) for s in sorted(self.assigned())}
