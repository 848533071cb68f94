"""Snapshots of the drift monitor's state in Redis, so a restart keeps its history.

The state (detectors, open alerts, pending searches, volume buckets) is pickled
under a key that names the format version: a worker of a newer version finds no
snapshot, starts cold and sits out the warm-up, instead of unpickling something
it does not understand. Pickle is fine here because only our own workers write
this key; anyone who can write to Redis can already falsify every feature.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import redis.asyncio as aioredis
from relevo.core.keys import Keys

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class Snapshots:
    """Save and load one pickled object per ``name`` under a versioned Redis key."""

    def __init__(self, client: aioredis.Redis, keys: Keys | None = None, name: str = "monitor",
                 version: int = FORMAT_VERSION) -> None:
        self.client = client
        self.key = (keys or Keys()).entity("drift", name, f"state-v{version}")

    async def save(self, state: Any) -> int:
        """Store ``state``; returns its size in bytes."""
        data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        await self.client.set(self.key, data)
        return len(data)

    async def load(self) -> Any | None:
        """The last saved state, or None when there is none (or it cannot be read)."""
        data = await self.client.get(self.key)
        if data is None:
            return None
        try:
            return pickle.loads(data)
        except Exception:  # a corrupt or foreign snapshot must not stop the worker
            log.exception("drift snapshot %s unreadable; starting cold", self.key)
            return None
