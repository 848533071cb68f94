"""The write path of the online store: a batch of events becomes one script call per key shard.

Exactly once, in two steps that survive a crash between them and work on Redis Cluster
(every script declares its keys and touches one shard's slot):

1. **claim** (``claim.lua``, per shard of the event ids): each event id is claimed for the
   position it was read at (``topic:partition@offset.index``). An id claimed at another
   position, or claimed before by an event with no position, is a duplicate the shop
   sent twice, and is skipped.
2. **apply** (``apply.lua``, per shard of the entity keys): the batch's updates,
   aggregated per (key, member), applied atomically together with the positions they
   came from. A shard that has already applied some of those positions (a batch read
   again after a crash) writes nothing and says what it has; the writer drops those
   events for that shard and applies the rest.

When a batch fails before any apply call (an event the aggregation cannot take), its
claims are released (``release.lua``): the batch is dead-lettered, and its re-drive is
claimed and applied like new.

So a worker killed at any point and restarted leaves every feature as if each event had
been applied once. ``relevo.features.online`` reads them back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from relevo.core.keys import Keys, dedupe_buckets, shard_of
from relevo.core.lua import script
from relevo.core.redis import AnyRedis, run_scripts
from relevo.features.batch import DEFS, BatchUpdate
from relevo.features.definitions import FEATURES
from relevo.features.updates import apply_event
from relevo.streams.events import Event
from relevo.streams.eventtime import POSITION, SOURCE, Position

CLAIM_LUA = script(__package__, "claim.lua")
APPLY_LUA = script(__package__, "apply.lua")
RELEASE_LUA = script(__package__, "release.lua")


def position(event: Event) -> str:
    """Where an event was read (``""`` for one that did not come from a topic)."""
    if SOURCE not in event:
        return ""
    offset, index = event[POSITION]
    return f"{event[SOURCE]}@{offset}.{index}"


def _positions(events: Sequence[Event]) -> dict[str, list[int]]:
    """Per source, the first and last position among ``events``: ``[offset, index, offset, index]``."""
    spans: dict[str, list[Position]] = {}
    for event in events:
        source = event.get(SOURCE)
        if source is not None:
            at = event[POSITION]
            span = spans.get(source)
            if span is None:
                spans[source] = [at, at]
            elif at < span[0]:
                span[0] = at
            elif at > span[1]:
                span[1] = at
    return {source: [*first, *last] for source, (first, last) in spans.items()}


def _after(event: Event, applied: dict[str, str]) -> bool:
    """Whether ``event`` comes after what its source has applied (events with no source always do)."""
    last = applied.get(event.get(SOURCE, ""))
    if last is None:
        return True
    offset, index = (int(part) for part in last.split("."))
    return tuple(event[POSITION]) > (offset, index)


class FeatureWriter:
    """The features processor: claims, then one atomic, idempotent script call per key shard."""

    name = "features"

    def __init__(self, redis: AnyRedis, keys: Keys, dedupe_window_s: int = 3600,
                 max_events_per_call: int = 2000) -> None:
        self.redis, self.keys, self.window_s = redis, keys, dedupe_window_s
        self.max_events = max_events_per_call  # bounds how long Redis is busy with one script
        self._claim = redis.register_script(CLAIM_LUA)
        self._apply = redis.register_script(APPLY_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    async def process(self, events: Sequence[Event]) -> None:
        for start in range(0, len(events), self.max_events):
            await self._write(events[start:start + self.max_events])

    async def _write(self, chunk: Sequence[Event]) -> None:
        unique = list({e["event_id"]: e for e in reversed(chunk)}.values())[::-1]  # the first of each id
        duplicates = await self._claims(unique, repeated=len(chunk) - len(unique))
        fresh = [e for e in unique if e["event_id"] not in duplicates]
        if not fresh:
            return
        try:
            batch, positions = _aggregate(fresh), _positions(fresh)
            pending = {shard: (rows, fresh, positions, batch.t_ref)
                       for shard, rows in batch.by_shard(self.keys).items()}
        except Exception:  # nothing reached a shard: unclaimed, a re-drive of the dead letters applies them
            await run_scripts(self.redis, self._claim_calls(self._release, fresh))
            raise
        await self._apply_all(pending)

    def _claim_calls(self, script: Any, events: Sequence[Event]) -> list[tuple[Any, list[str], list[bytes]]]:
        """One ``script`` call per shard of the events' ids: its dedupe buckets and counters, the ids."""
        by_shard: dict[int, list[list[str]]] = {}
        for event in events:
            by_shard.setdefault(shard_of(event["event_id"]), []).append([event["event_id"], position(event)])
        now = time.time()
        calls = []
        for shard, ids in by_shard.items():
            buckets, ttl = dedupe_buckets(self.keys.in_shard(shard, "seen"), self.window_s, now)
            calls.append((script, [*buckets, self.keys.in_shard(shard, "counts")],
                          [orjson.dumps({"ids": ids, "ttl": ttl})]))
        return calls

    async def _claims(self, events: Sequence[Event], repeated: int) -> set[str]:
        results = await run_scripts(self.redis, self._claim_calls(self._claim, events))
        if repeated:  # the same id twice within one batch: the later ones are duplicates
            await self.redis.hincrby(self.keys.in_shard(0, "counts"), "events_duplicate", repeated)
        return {d.decode() for found in results for d in found}

    def _call(self, shard: int, rows: list[list[Any]], positions: dict[str, list[int]], t_ref: int
              ) -> tuple[Any, list[str], list[bytes]]:
        keys = [self.keys.in_shard(shard, "applied"), self.keys.in_shard(shard, "latest")]
        groups = []
        for index, key, flat in rows:
            groups.append([index + 1, len(keys) + 1, flat])  # Lua counts from 1
            keys.append(key)
            if FEATURES[index].aggregation == "decayed":
                keys.append(key + "~L")
        payload = {"positions": positions, "t_ref": t_ref, "defs": DEFS, "groups": groups}
        return self._apply, keys, [orjson.dumps(payload)]

    async def _apply_all(self, pending: dict[int, tuple[list[list[Any]], Sequence[Event], dict[str, list[int]], int]]
                         ) -> None:
        """``pending``: shard -> (its rows, the events they came from, their positions, the time decayed
        values are relative to)."""
        while pending:
            shards = list(pending)
            results = await run_scripts(self.redis, [self._call(shard, rows, spans, t_ref)
                                                     for shard, (rows, _, spans, t_ref) in pending.items()])
            retry = {}
            for shard, result in zip(shards, results, strict=True):
                if result[0] == b"overlap":  # read again after a crash: apply only what this shard lacks
                    applied = orjson.loads(result[1])
                    rest = [e for e in pending[shard][1] if _after(e, applied)]
                    again = _aggregate(rest)
                    rows = again.by_shard(self.keys).get(shard)
                    if rows:
                        retry[shard] = (rows, rest, _positions(rest), again.t_ref)
            pending = retry

    async def tick(self) -> None:
        """Nothing happens between batches."""

    async def close(self) -> None:
        """Nothing is buffered: every batch is in Redis when ``process`` returns."""


def _aggregate(events: Sequence[Event]) -> BatchUpdate:
    batch = BatchUpdate()
    for event in events:
        apply_event(event, batch)
    return batch
