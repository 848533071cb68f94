"""Drive a region partition in process, the way the region stream feeds it: records of events
with their sources' marks (``relevo.streams.regions``), in whatever order a test chooses."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from relevo.streams.eventtime import POSITION, SOURCE, Mark
from relevo.streams.regions import RegionOperator, RegionPartition, encode_record

Event = dict[str, Any]
IDLE_MS = 1_000


class Feeder:
    """One region partition fed record by record; each source's positions count up from 0."""

    def __init__(self, operators: Sequence[RegionOperator], sources: Sequence[str] = ("events:0",),
                 **partition: Any) -> None:
        self.sources = list(sources)
        self.partition = RegionPartition(0, operators, self.sources, idle_ms=IDLE_MS, **partition)
        self.calls = 0  # of ``handle``, a backlog's included
        self.offsets = dict.fromkeys(self.sources, 0)
        self.watermarks: dict[str, int | None] = dict.fromkeys(self.sources, None)
        self.at = 0

    def send(self, events: Sequence[Event], source: str | None = None, lag: int = 1) -> None:
        """``events`` read from ``source`` (still ``lag`` records behind), as one record."""
        source = source or self.sources[0]
        stamped = []
        for event in events:
            stamped.append({**event, SOURCE: source, POSITION: (self.offsets[source], 0)})
            self.offsets[source] += 1
            self.watermarks[source] = max(self.watermarks[source] or 0, event["ts"])
        self.at += 1
        self._handle([encode_record({source: Mark(self.watermarks[source], lag, self.at)}, stamped)])

    def _handle(self, values: list[bytes]) -> None:
        """As the stage does: the records, then what the partition left for later, call by call."""
        self.partition.handle(values)
        self.calls += 1
        while self.partition.backlog():
            self.partition.handle(())
            self.calls += 1

    def quiet(self, source: str) -> None:
        """``source`` reports it has read everything and stays silent past the idle time."""
        for _ in range(2):
            self.at += IDLE_MS
            self._handle([encode_record({source: Mark(self.watermarks[source], 0, self.at)}, [])])

    def finish(self) -> None:
        """Every source read to its end and idle: the partition applies everything it holds."""
        for source in self.sources:
            self.quiet(source)

    async def flush(self) -> None:
        await self.partition.flush()

    def restarted(self, operators: Sequence[RegionOperator], dump: Any = None) -> Feeder:
        """A copy restored from ``dump`` (default: this partition's snapshot, pickled as a stage would)."""
        copy = Feeder.__new__(Feeder)
        copy.sources, copy.offsets, copy.watermarks, copy.at, copy.calls = self.sources, dict(self.offsets), \
            dict(self.watermarks), self.at, 0
        copy.partition = RegionPartition(0, operators, self.sources, idle_ms=IDLE_MS,
                                         dump=dump or pickle.loads(pickle.dumps(self.partition.dump())))
        return copy
