"""The suggestion index in Redis: decayed query counts per scope under every prefix.

Layout, under ``{prefix}:{shard}:sugg`` (a shard holds the queries that start with the
same character: every key one query's update or one prefix's read touches shares the
shard's hash tag, so each script call stays in one Redis Cluster slot):

- ``:sup`` — every query seen, scored by its decayed count of distinct sessions
  (the support); capped at ``max_queries``.
- ``:px:{scope}:{prefix}`` and ``:pxs:{scope}:{prefix}`` — the best queries
  under a prefix, long- and short-half-life; scope is ``g``, ``r:{region}`` or
  ``l:{locale}`` (no short index: trend is read per region and globally); capped
  at ``per_prefix``.
- ``:u:{user}`` — the user's own queries; ``:qc:{digest}`` — categories clicked
  after a query; ``:d:{digest}`` — the query as last typed, for display;
  ``:sq:…`` — one count per (session, query); ``:seen:b{n}`` — event ids applied
  in time bucket n (wall clock, ``dedupe_window_s`` over ``DEDUPE_BUCKETS``).

A search is remembered for the clicks that follow it under ``{prefix}:{shard of its
id}:sugg:s:{search_id}`` (a click knows its search's id, not its query).

Each decayed set carries its forward-decay landmark in ``{key}~L``. Writes are one
Lua call per shard and batch (``update.lua``); a read is one Lua call (``candidates.lua``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from relevo.core.decay import rate_per_ms
from relevo.core.keys import Keys, dedupe_buckets, safe_id, shard_of
from relevo.core.lua import script
from relevo.core.redis import pipelined, raising_errors, run_scripts
from relevo.suggestions.config import DEFAULT_CONFIG, SuggestConfig
from relevo.suggestions.ranking import Candidate

UPDATE_LUA = script(__package__, "update.lua")
CANDIDATES_LUA = script(__package__, "candidates.lua")
DEFAULT_KEYS = Keys()


@dataclass(frozen=True)
class QueryEvent:
    """One event as the index sees it: a normalised query and how much to add to it."""

    event_id: str
    ts: int
    query: str
    weight: float
    is_search: bool
    session_id: str
    user_id: str
    region: str
    locale: str = ""
    category: str = ""
    text: str = ""  # the query as typed (searches only): what users are shown
    search_id: str = ""  # searches only: remembered for the clicks that follow


def prefixes(query: str, max_chars: int) -> list[str]:
    """The prefixes a query is indexed under (none ends in a space: normalised input never does).

    >>> prefixes("new york", 5)
    ['n', 'ne', 'new', 'new y']
    """
    return [query[:n] for n in range(1, min(len(query), max_chars) + 1) if not query[n - 1].isspace()]


def _scopes(region: str | None, locale: str | None) -> list[tuple[str, str, bool]]:
    """(name, key part, has a short-half-life index) per scope; trend is read per region and globally."""
    return ([("region", f"r:{safe_id(region)}", True)] if region else []) \
        + ([("locale", f"l:{safe_id(locale)}", False)] if locale else []) + [("global", "g", True)]


def _scope_payload(scopes: list[tuple[str, str, bool]]) -> list[tuple[str, int]]:
    return [(part, int(recent)) for _, part, recent in scopes]


class SuggestionStore:
    """Writes query events into the index and reads scored candidates back."""

    def __init__(self, redis: aioredis.Redis, keys: Keys = DEFAULT_KEYS,
                 config: SuggestConfig = DEFAULT_CONFIG) -> None:
        self.redis, self.config, self.keys = redis, config, keys
        self._update = redis.register_script(UPDATE_LUA)
        self._candidates = redis.register_script(CANDIDATES_LUA)
        self._lambda_long = rate_per_ms(config.long_half_life_s)
        self._lambda_short = rate_per_ms(config.short_half_life_s)

    def base(self, text: str) -> str:
        """The shard of the queries starting like ``text``."""
        return self.keys.in_shard(shard_of(text[:1]), "sugg")

    def search_key(self, search_id: str) -> str:
        return self.keys.in_shard(shard_of(search_id), f"sugg:s:{safe_id(search_id)}")

    def payload(self, base: str, events: Sequence[QueryEvent]) -> bytes:
        c = self.config
        seen_keys, seen_ttl_s = dedupe_buckets(f"{base}:seen", c.dedupe_window_s, time.time())
        records = [
            [e.event_id, e.ts, int(e.is_search), safe_id(e.session_id),
             e.weight, e.query, _scope_payload(_scopes(e.region, e.locale)),
             safe_id(e.user_id) if e.user_id else "",
             [safe_id(p) for p in prefixes(e.query, c.max_prefix_chars)], e.category, e.text]
            for e in events
        ]
        return orjson.dumps({
            "lambda_long": self._lambda_long, "lambda_short": self._lambda_short,
            "min_support": c.min_support, "per_prefix": c.per_prefix, "max_queries": c.max_queries,
            "max_user_queries": c.max_user_queries, "max_categories": c.max_query_categories,
            "ttl_s": c.ttl_s, "search_memory_s": c.search_memory_s,
            "seen_keys": seen_keys, "seen_ttl_s": seen_ttl_s,
            "records": records,
        })

    async def apply(self, events: Sequence[QueryEvent]) -> None:
        """Learn ``events``: per shard, ``script_events`` per Lua call (a script blocks Redis while it
        runs), all in one round trip; then remember the searches for the clicks that follow them."""
        by_base: dict[str, list[QueryEvent]] = {}
        for event in events:
            by_base.setdefault(self.base(event.query), []).append(event)
        step = self.config.script_events
        await run_scripts(self.redis, [(self._update, [base], [self.payload(base, group[start:start + step])])
                                       for base, group in by_base.items() for start in range(0, len(group), step)])
        searches = [e for e in events if e.search_id]
        if searches:
            ttl = self.config.search_memory_s
            remember = [("SET", self.search_key(e.search_id), orjson.dumps(e), "EX", ttl)  # orjson writes dataclasses
                        for e in searches]
            raising_errors(await pipelined(self.redis, remember))

    async def searches(self, search_ids: Sequence[str]) -> dict[str, QueryEvent]:
        """The remembered searches among ``search_ids`` (one round trip; one key per search)."""
        if not search_ids:
            return {}
        stored = raising_errors(await pipelined(self.redis, [("GET", self.search_key(sid)) for sid in search_ids]))
        return {sid: QueryEvent(**orjson.loads(raw)) for sid, raw in zip(search_ids, stored, strict=True)
                if raw is not None}

    async def candidates(self, prefix: str, region: str | None = None, locale: str | None = None,
                         user_id: str | None = None, n: int = 20,
                         categories: bool = False) -> tuple[int, list[Candidate]]:
        """The stream clock (epoch ms) and the candidates under a normalised ``prefix``.

        A prefix longer than the indexed ones is looked up by its indexed part and
        the candidates filtered by the whole prefix.
        """
        scopes = _scopes(region, locale)
        indexed = prefix[: self.config.max_prefix_chars]
        payload = orjson.dumps({
            "lambda_long": self._lambda_long, "lambda_short": self._lambda_short,
            "scopes": _scope_payload(scopes), "prefix_key": safe_id(indexed), "prefix": prefix,
            "user": safe_id(user_id) if user_id else "", "n": n, "categories": categories,
        })
        out = orjson.loads(await self._candidates(keys=[self.base(prefix)], args=[payload]))
        found = []
        for row in out["rows"] or []:
            query, text, support, *scoped, user, cats = row
            if not query.startswith(prefix):
                continue
            values = iter(scoped)
            popularity, recent = {}, {}
            for name, _, has_recent in scopes:
                popularity[name] = next(values)
                if has_recent:
                    recent[name] = next(values)
            found.append(Candidate(query, support, popularity, recent, user, cats or {}, text))
        return int(out["clock"]), found
