"""The global stream: every region partition's minute buckets, combined, watched like a region (``*``).

``GlobalDrift`` is the state of the one partition of ``drift.global`` (a
``PartitionState``). Each region partition sends the buckets it has closed and how far
it has closed them (``through``); a minute is complete once every partition has closed
it, and only then does it become global observations, in one canonical order: the
minute's volume and purchase rate, then each metric's values spread evenly through the
minute (``interleave``: bursts of equal values would look like a change to a detector).
Buckets a restarted partition sends again are ignored, so the global stream, like the
regional ones, does not depend on which worker read what or how often.

>>> combined = GlobalDrift(partitions=2)
>>> row = [0, 10, 1, {"ctr": [[0.0, 2], [1.0, 1]]}]
>>> combined.handle([orjson.dumps({"p": 0, "through": 0, "buckets": [row]})])
>>> combined.pending_observations
[]
>>> combined.handle([orjson.dumps({"p": 1, "through": 3, "buckets": []})])
>>> [(m, v) for _, m, v, _ in combined.pending_observations]
[('volume', 10.0), ('purchase_rate', 0.1), ('ctr', 0.0), ('ctr', 1.0), ('ctr', 0.0)]
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from relevo.drift.detection import Detection, DetectionState, Observation
from relevo.drift.metrics import GLOBAL, METRICS, MetricSpec
from relevo.drift.sinks import AlertStore, Sink

STAGE = "global"  # the global stage's consumer group suffix and snapshot name


def interleave(counts: Sequence[tuple[Any, int]]) -> list[Any]:
    """Each value ``count`` times, spread evenly (deterministic: ties keep the given order).

    >>> interleave([("a", 1), ("b", 3)])
    ['b', 'a', 'b', 'b']
    """
    total = sum(n for _, n in counts)
    slots = sorted(((i + 0.5) * total / n, rank, value)
                   for rank, (value, n) in enumerate(counts) for i in range(n))
    return [value for _, _, value in slots]


@dataclasses.dataclass
class CombinedState:
    through: dict[int, int]  # region partition -> every bucket up to this one received
    pending: dict[int, list[Any]] = dataclasses.field(default_factory=dict)  # bucket -> [events, purchases, values]
    next_bucket: int | None = None  # the first bucket not yet turned into observations
    silent: int = 0  # empty buckets reported since the last one with events (capped at max_gap)
    detection: DetectionState | None = None


class GlobalDrift:
    """The global stage's partition state (see the module doc)."""

    def __init__(self, partitions: int, store: AlertStore | None = None, sinks: Sequence[Sink] = (), *,
                 metrics: Mapping[str, MetricSpec] = METRICS, cooldown_ms: int = 30 * 60_000,
                 bucket_ms: int = 60_000, max_gap: int = 60, dump: CombinedState | None = None) -> None:
        self.store, self.sinks, self.bucket_ms, self.max_gap = store, list(sinks), bucket_ms, max_gap
        self.detection = Detection(metrics, cooldown_ms)
        self.state = dump or CombinedState(dict.fromkeys(range(partitions), -1))
        if self.state.detection is None:
            self.state.detection = self.detection.state
        self.detection.state = self.state.detection
        self.pending_observations: list[Observation] = []
        self._revision = 0

    def revision(self) -> int:
        """Every record of the global stream is a region partition's closed buckets: each changes the state."""
        return self._revision

    def backlog(self) -> bool:
        """``handle`` applies all it is given."""
        return False

    def handle(self, values: Sequence[bytes]) -> None:
        state = self.state
        self._revision += len(values)
        for value in values:
            record = orjson.loads(value)
            seen = state.through.get(record["p"], -1)
            for number, events, purchases, metrics in record["buckets"]:
                if number <= seen:
                    continue  # sent again by a restarted partition
                merged = state.pending.setdefault(number, [0, 0, {}])
                merged[0] += events
                merged[1] += purchases
                for metric, counts in metrics.items():
                    into = merged[2].setdefault(metric, Counter())
                    for v, n in counts:
                        into[v] += n
            state.through[record["p"]] = max(seen, record["through"])
        self._advance(min(state.through.values()))

    def _advance(self, complete: int) -> None:
        """Turn every bucket up to ``complete`` into observations, in bucket order."""
        state, out = self.state, self.pending_observations
        if state.next_bucket is None:
            # Start only once the earliest bucket is complete: before that, a partition not yet
            # heard from may still send an earlier one (afterwards every partition's buckets lie
            # past its ``through``, so past ``complete``).
            if not state.pending or min(state.pending) > complete:
                return
            state.next_bucket = min(state.pending)
        while state.next_bucket <= complete:
            number = state.next_bucket
            ts = number * self.bucket_ms
            bucket = state.pending.pop(number, None)
            if bucket is None:
                if state.silent < self.max_gap:  # capped per silence, however the calls split it
                    state.silent += 1
                    out.append((GLOBAL, "volume", 0.0, ts))
                    state.next_bucket += 1
                else:  # a long silence: skip to the next bucket with events
                    later = [n for n in state.pending if n <= complete]
                    state.next_bucket = min(later) if later else complete + 1
                continue
            state.silent = 0
            events, purchases, metrics = bucket
            out.append((GLOBAL, "volume", float(events), ts))
            if events:
                out.append((GLOBAL, "purchase_rate", purchases / events, ts))
            for metric in sorted(metrics):
                counts = sorted(metrics[metric].items(), key=lambda kv: str(kv[0]))
                out.extend((GLOBAL, metric, value, ts) for value in interleave(counts))
            state.next_bucket += 1

    async def flush(self) -> None:
        observations, self.pending_observations = self.pending_observations, []
        self.detection.observe(observations)
        await self.detection.publish(self.store, self.sinks)

    def dump(self) -> CombinedState:
        return self.state

    def settled(self) -> bool:
        """Every bucket received has become observations."""
        return not self.state.pending
