"""The suggestions agent: turns searches, and the clicks and purchases after them, into index updates.

A search teaches its normalised query; a click or purchase carrying the
``search_id`` of an earlier search adds weight to that search's query, so
queries that led somewhere rank higher. Searches are remembered in Redis for
``search_memory_s`` (and in a small local cache), so a click in a later batch,
or handled by another worker, still finds its query.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence

import redis.asyncio as aioredis

from relevo.core.keys import Keys
from relevo.streams.events import Event
from relevo.suggestions.config import DEFAULT_CONFIG, SuggestConfig
from relevo.suggestions.filters import QueryFilter
from relevo.suggestions.store import DEFAULT_KEYS, QueryEvent, SuggestionStore

log = logging.getLogger(__name__)
LOCAL_SEARCHES = 20_000


def as_typed(query: str) -> str:
    """The query as shown back to users: width and spacing folded, case and accents kept.

    >>> as_typed("  Ｓão   Paulo ")
    'São Paulo'
    """
    return " ".join(unicodedata.normalize("NFKC", query).split())


class SuggestionUpdater:
    """BatchProcessor that keeps the suggestion index fresh; idempotent per event id."""

    name = "suggestions"

    def __init__(self, redis: aioredis.Redis, keys: Keys = DEFAULT_KEYS,
                 config: SuggestConfig = DEFAULT_CONFIG) -> None:
        self.redis, self.config = redis, config
        self.store = SuggestionStore(redis, keys, config)
        self.filter = QueryFilter(config.blocklist)
        self._searches: OrderedDict[str, QueryEvent] = OrderedDict()

    def _remember(self, search_id: str, search: QueryEvent) -> None:
        self._searches[search_id] = search
        self._searches.move_to_end(search_id)
        if len(self._searches) > LOCAL_SEARCHES:
            self._searches.popitem(last=False)

    async def _searches_of(self, events: Sequence[Event]) -> dict[str, QueryEvent]:
        """The searches the clicks and purchases in ``events`` followed, from memory or Redis."""
        wanted = {e["search_id"] for e in events if e["type"] != "search" and e.get("search_id")}
        found = {sid: self._searches[sid] for sid in wanted if sid in self._searches}
        return found | await self.store.searches(sorted(wanted - found.keys()))

    async def process(self, events: Sequence[Event]) -> None:
        searches = await self._searches_of(events)
        updates: list[QueryEvent] = []
        for e in events:
            weight = self.config.event_weight(e)
            if e["type"] == "search":
                query = self.filter.clean(e.get("query", ""))
                if query is None:
                    continue
                update = QueryEvent(e["event_id"], e["ts"], query, weight, True, e["session_id"],
                                    e["user_id"], e["region"], e.get("locale", ""), text=as_typed(e["query"]),
                                    search_id=e["search_id"])
                searches[e["search_id"]] = update
            elif (search := searches.get(e.get("search_id") or "")) is not None:
                update = QueryEvent(e["event_id"], e["ts"], search.query, weight, False, e["session_id"],
                                    e["user_id"], search.region, search.locale, e.get("category") or "")
            else:
                continue
            updates.append(update)
        await self.store.apply(updates)
        for update in updates:
            if update.search_id:
                self._remember(update.search_id, update)
        log.debug("learned %d query events from a batch of %d", len(updates), len(events))

    async def tick(self) -> None:
        """Nothing happens between batches."""

    async def close(self) -> None:
        """Nothing is buffered: every batch is in Redis when ``process`` returns."""
