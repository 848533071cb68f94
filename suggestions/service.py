"""Serving-side suggestions: normalise the prefix, read candidates, filter, rank.

One Redis round trip per request (a Lua script reads every signal); when a
feature store is wired in, the user's category affinity (and only it) is read concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from relevo.core.keys import Keys
from relevo.core.text import normalize
from relevo.suggestions.config import DEFAULT_CONFIG, SuggestConfig
from relevo.suggestions.filters import QueryFilter
from relevo.suggestions.ranking import DEFAULT_WEIGHTS, Candidate, RankWeights, Suggestion, SuggestionRanker
from relevo.suggestions.store import DEFAULT_KEYS, SuggestionStore

MAX_K = 50


class UserFeatures(Protocol):
    """The part of ``relevo.features.online.OnlineStore`` suggestions use."""

    async def user(self, user_id: str, *, fields: Collection[str] | None = None) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class SuggestResult:
    prefix: str  # as normalised
    as_of: int  # stream clock, epoch ms
    suggestions: list[Suggestion]


class SuggestService:
    """Answers "what completes this prefix for this user, here, now"."""

    def __init__(self, redis: aioredis.Redis, keys: Keys = DEFAULT_KEYS,
                 config: SuggestConfig = DEFAULT_CONFIG, weights: RankWeights = DEFAULT_WEIGHTS,
                 features: UserFeatures | None = None) -> None:
        self.config, self.features = config, features
        self.store = SuggestionStore(redis, keys, config)
        self.filter = QueryFilter(config.blocklist)
        self.ranker = SuggestionRanker(weights, config.long_half_life_s, config.short_half_life_s)

    def _allowed(self, c: Candidate) -> bool:
        # Only admitted queries (support once reached min_support) have popularity in the index.
        indexed = c.support >= self.config.keep_support and any(c.popularity.values())
        supported = indexed or (self.config.own_history and c.user > 0)
        return supported and self.filter.allows(c.query)

    async def candidates(self, prefix: str, user_id: str | None = None, region: str | None = None,
                         locale: str | None = None, k: int = 10,
                         ) -> tuple[int, list[Candidate], Mapping[str, float] | None]:
        """Clock, the candidates under a normalised ``prefix`` that may be shown, and the user's
        category affinity (or None)."""
        personal = self.features is not None and bool(user_id)
        read = self.store.candidates(prefix, region, locale, user_id, n=min(2 * k, self.config.per_prefix),
                                     categories=personal)
        categories = None
        if personal:  # only then is the feature store read, concurrently: gather costs a loop turn
            (clock, found), user = await asyncio.gather(read, self.features.user(user_id, fields=("categories",)))
            categories = (user or {}).get("categories") or None
        else:
            clock, found = await read
        allowed = [c for c in found if self._allowed(c)]
        return clock, allowed, categories

    async def suggest(self, prefix: str, user_id: str | None = None, region: str | None = None,
                      locale: str | None = None, k: int = 10) -> SuggestResult:
        text = normalize(prefix)
        k = max(1, min(k, MAX_K))
        if not text:
            return SuggestResult(text, 0, [])
        clock, found, categories = await self.candidates(text, user_id, region, locale, k)
        return SuggestResult(text, clock, self.ranker.rank(found, k, categories))
