"""Knobs of the suggestion index: decay, memory bounds, event weights.

>>> c = SuggestConfig()
>>> c.long_half_life_s > c.short_half_life_s, c.event_weight({"type": "click", "kind": "view"})
(True, 0.2)
"""

from __future__ import annotations

from dataclasses import dataclass

from relevo.core.settings import Settings
from relevo.streams.events import Event


@dataclass(frozen=True)
class SuggestConfig:
    """How the index learns and how much memory it may take.

    Memory is bounded three ways: a query is indexed under its first
    ``max_prefix_chars`` prefixes only, each prefix keeps its ``per_prefix`` best
    queries, and every key expires ``ttl_s`` after its last update. The support
    set (every query seen, with its decayed count of distinct sessions) keeps its
    ``max_queries`` best. A query enters the prefix index once its support reaches
    ``min_support``, and is shown until it decays below ``keep_support`` (half of
    it: a half-life without searches), so it does not flicker as it decays.
    """

    long_half_life_s: float = 7 * 86400  # popularity
    short_half_life_s: float = 3600  # burst; trend = short rate / long rate
    blocklist: tuple[str, ...] = ()  # terms never suggested (whole words; substrings in CJK)
    # Decayed distinct sessions before a query is suggested: 1.5 is two sessions within a half-life.
    min_support: float = 1.5
    own_history: bool = True  # suggest users their own past queries even below min_support
    max_prefix_chars: int = 8  # a longer prefix is served from its first 8 characters, filtered
    per_prefix: int = 32
    max_queries: int = 100_000
    max_user_queries: int = 50
    max_query_categories: int = 16
    ttl_s: int = 14 * 86400
    dedupe_window_s: int = 3600
    search_memory_s: int = 3600  # how long a search_id is remembered for its clicks
    script_events: int = 16  # events per Lua call: a call blocks Redis, ~0.1 ms per search learned
    search_weight: float = 1.0
    click_weights: tuple[tuple[str, float], ...] = (("view", 0.2), ("click", 1.0), ("cart", 2.0))
    purchase_weight: float = 4.0  # a query that sold something is the best suggestion

    @classmethod
    def from_settings(cls, settings: Settings) -> SuggestConfig:
        """The index's configuration from the environment; the worker and the API must share it."""
        blocklist = tuple(t.strip() for t in settings.suggest_blocklist.split(",") if t.strip())
        return cls(blocklist=blocklist, min_support=settings.suggest_min_support,
                   dedupe_window_s=settings.dedupe_window_s)

    @property
    def keep_support(self) -> float:
        return self.min_support / 2

    def event_weight(self, event: Event) -> float:
        """How much an event adds to its query's popularity."""
        if event["type"] == "search":
            return self.search_weight
        if event["type"] == "purchase":
            return self.purchase_weight
        return dict(self.click_weights).get(event.get("kind", "click"), 0.0)


DEFAULT_CONFIG = SuggestConfig()
