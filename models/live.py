"""The serving side of the registry: the model that ranks now, hot-reloaded.

``LiveModel`` holds the serving version and the one before it as a single
tuple, swapped in one assignment, so a request sees either the old model or
the new one, never a mix. ``refresh()`` follows the registry's pointer; call it
when ``model.updates`` announces a version, or from ``watch()``'s polling loop.
A version whose file fails its checksum is refused and the old one keeps
serving.

>>> import tempfile
>>> from relevo.models.ranker import Ranker, RankerConfig
>>> from relevo.models.registry import Registry
>>> registry = Registry(tempfile.mkdtemp())
>>> live = LiveModel(registry)
>>> live.version is None, live.refresh()
(True, False)
>>> _ = registry.publish(Ranker(RankerConfig(item_buckets=16, user_buckets=4, region_buckets=4)),
...                      parent=None, window=(0, 1), figures={})
>>> live.refresh(), live.version
(True, 1)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from relevo.models.ranker import Ranker
from relevo.models.registry import CorruptModel, IncompatibleModel, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    version: int
    model: Ranker


class LiveModel:
    """The current and previous ranker versions, as loaded from ``registry``."""

    def __init__(self, registry: Registry, device: str = "cpu") -> None:
        self.registry = registry
        self.device = device
        self._slots: tuple[Loaded | None, Loaded | None] = (None, None)

    @property
    def serving(self) -> Loaded | None:
        """The version serving now with its model (one read: the two always belong together)."""
        return self._slots[0]

    @property
    def version(self) -> int | None:
        current = self._slots[0]
        return current.version if current else None

    @property
    def previous_version(self) -> int | None:
        previous = self._slots[1]
        return previous.version if previous else None

    def refresh(self) -> bool:
        """Load the registry's serving version if it changed; True when a swap happened."""
        wanted = self.registry.current()
        current, previous = self._slots
        if wanted is None or (current and current.version == wanted):
            return False
        if previous and previous.version == wanted:  # a rollback: the old model is still in memory
            self._slots = (previous, current)
            return True
        try:
            loaded = Loaded(wanted, self.registry.load(wanted, self.device))
        except (CorruptModel, IncompatibleModel):
            log.exception("refusing model v%s; v%s keeps serving", wanted, self.version)
            return False
        self._slots = (loaded, current)
        log.info("serving model v%d (was v%s)", wanted, current.version if current else None)
        return True

    def scores(self, search: dict[str, Any]) -> list[float] | None:
        """Scores of a search's results (``features`` from ``ContextState``); None before any model."""
        current = self._slots[0]
        if current is None:
            return None
        return current.model.scores({**search, "items": search["results"]}).tolist()

    async def watch(self, interval_s: float = 2.0) -> None:
        """Poll the registry forever (the fallback when ``model.updates`` is not followed)."""
        while True:
            await asyncio.to_thread(self.refresh)
            await asyncio.sleep(interval_s)
