"""The write path of the online store: a batch of events becomes one Lua call in Redis.

Writes go through one Lua script per batch (``apply.lua``): atomic, idempotent
per event id, and one round trip however many events the batch holds.
``features.online`` reads them back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from relevo.core.keys import Keys, dedupe_buckets
from relevo.core.lua import script
from relevo.features.batch import BatchUpdate
from relevo.features.updates import apply_event
from relevo.streams.events import Event

APPLY_LUA = script(__package__, "apply.lua")


class FeatureWriter:
    """The features processor: a batch of events becomes one atomic, idempotent Redis script call."""

    name = "features"

    def __init__(self, redis: aioredis.Redis, keys: Keys, dedupe_window_s: int = 3600,
                 max_events_per_call: int = 2000) -> None:
        self.redis, self.keys, self.window_s = redis, keys, dedupe_window_s
        self.max_events = max_events_per_call  # bounds how long Redis is busy with one script
        self._sha: str | None = None

    def payload(self, events: Sequence[Event], now_s: float) -> bytes:
        batch = BatchUpdate()
        for event in events:
            apply_event(event, batch)
        seen_keys, window_s = dedupe_buckets(self.keys.seen, self.window_s, now_s)
        return orjson.dumps({**batch.payload(self.keys), "ids": [e["event_id"] for e in events],
                             "seen_keys": seen_keys, "window_s": window_s,
                             "clock_key": self.keys.clock, "stats_key": self.keys.stats})

    async def process(self, events: Sequence[Event]) -> None:
        # Redis runs one chunk's script while Python aggregates the next: the request is
        # written before the next payload is built and its answer read after.
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            sent: tuple[list[Event], int] | None = None
            for start in range(0, len(events), self.max_events):
                chunk = events[start:start + self.max_events]
                unique = list({e["event_id"]: e for e in reversed(chunk)}.values())[::-1]
                payload = self.payload(unique, time.time())
                if sent is not None:
                    await self._finish(conn, *sent)
                await self._send(conn, payload)
                sent = (unique, len(chunk) - len(unique))
            if sent is not None:
                await self._finish(conn, *sent)
        finally:
            await pool.release(conn)

    async def _send(self, conn: Any, payload: bytes) -> None:
        if self._sha is None:
            self._sha = await self.redis.script_load(APPLY_LUA)
        await conn.send_command("EVALSHA", self._sha, 0, payload)

    async def _finish(self, conn: Any, unique: list[Event], duplicates: int) -> None:
        """Read the answer to the chunk sent last; re-apply without ids Redis had already seen."""
        while True:
            try:
                status, detail = await conn.read_response()
            except ResponseError as exc:
                if "NOSCRIPT" not in str(exc):
                    raise
                self._sha = None  # Redis restarted and lost its script cache
                await self._send(conn, self.payload(unique, time.time()))
                continue
            if status == b"applied":
                break
            seen = {s.decode() for s in detail}  # a redelivery: apply only what is new
            duplicates += len(seen)
            unique = [e for e in unique if e["event_id"] not in seen]
            if not unique:
                break
            await self._send(conn, self.payload(unique, time.time()))
        if duplicates:
            await self.redis.hincrby(self.keys.stats, "events_duplicate", duplicates)

    async def close(self) -> None:
        """Nothing is buffered: every batch is in Redis when ``process`` returns."""
