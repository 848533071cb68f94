"""Deterministic, explainable ranking of suggestion candidates.

A candidate's score is a weighted sum of a few signals, each on a log scale so
no single one swamps the rest; ties break on the query text, so the same state
always gives the same list. ``explain`` returns each weighted signal.

>>> ranker = SuggestionRanker()
>>> paris = Candidate("paris", support=40, popularity={"region": 30.0, "global": 90.0},
...                   recent={"region": 0.5})
>>> porto = Candidate("porto", support=5, popularity={"region": 4.0, "global": 5.0},
...                   recent={"region": 4.0}, user=3.0)
>>> [s.query for s in ranker.rank([porto, paris], k=2)]
['porto', 'paris']
>>> [s.query for s in SuggestionRanker(GLOBAL_POPULARITY).rank([porto, paris], k=2)]
['paris', 'porto']
>>> sorted(ranker.rank([paris], k=1)[0].signals)
['global', 'intent', 'locale', 'region', 'trend', 'user']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from relevo.core.decay import rate_per_ms

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Candidate:
    """What the index knows about one query under a prefix, decayed to the stream clock.

    ``popularity`` and ``recent`` hold long- and short-half-life counts per scope
    (``region``, ``locale``, ``global``); ``user`` is the user's own decayed count;
    ``categories`` is where clicks after this query went.
    """

    query: str
    support: float
    popularity: Mapping[str, float] = field(default_factory=dict)
    recent: Mapping[str, float] = field(default_factory=dict)
    user: float = 0.0
    categories: Mapping[str, float] = field(default_factory=dict)
    text: str = ""  # as typed, for display; the normalised query when unknown


@dataclass(frozen=True)
class Suggestion:
    query: str  # normalised
    text: str  # as typed, for display
    score: float
    signals: Mapping[str, float]  # each weighted signal; they sum to score
    candidate: Candidate  # the counts the signals came from


@dataclass(frozen=True)
class RankWeights:
    region: float = 1.0
    locale: float = 0.3
    global_: float = 0.3
    trend: float = 1.0
    user: float = 2.0
    intent: float = 1.0


DEFAULT_WEIGHTS = RankWeights()
GLOBAL_POPULARITY = RankWeights(0, 0, 1, 0, 0, 0)  # baseline: what everyone searches
REGION_ONLY = RankWeights(1, 0, 0, 0, 0, 0)  # baseline: what this region searches


def cosine(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Cosine similarity of two sparse vectors.

    >>> round(cosine({"shoes": 3.0}, {"shoes": 1.0, "bags": 1.0}), 6)
    0.707107
    """
    dot = sum(v * b.get(k, 0.0) for k, v in a.items())
    norm = math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


@dataclass(frozen=True)
class SuggestionRanker:
    """Scores candidates; trend compares the short- and long-half-life search rates.

    ``prior_per_hour`` damps the trend of rare queries: one search of a new query
    is not yet a burst.
    """

    weights: RankWeights = DEFAULT_WEIGHTS
    long_half_life_s: float = 7 * 86400
    short_half_life_s: float = 3600
    prior_per_hour: float = 0.5

    def trend(self, c: Candidate) -> float:
        """log2 of how much faster the query is searched lately than usually (never negative)."""
        scope = "region" if "region" in c.popularity else "global"
        # A decayed count with rate r settles at r / lambda, so count * lambda estimates the rate.
        short = c.recent.get(scope, 0.0) * rate_per_ms(self.short_half_life_s) * HOUR_MS
        long = c.popularity.get(scope, 0.0) * rate_per_ms(self.long_half_life_s) * HOUR_MS
        return max(0.0, math.log2((short + self.prior_per_hour) / (long + self.prior_per_hour)))

    def signals(self, c: Candidate, user_categories: Mapping[str, float] | None) -> dict[str, float]:
        w = self.weights
        return {
            "region": w.region * math.log1p(c.popularity.get("region", 0.0)),
            "locale": w.locale * math.log1p(c.popularity.get("locale", 0.0)),
            "global": w.global_ * math.log1p(c.popularity.get("global", 0.0)),
            "trend": w.trend * self.trend(c),
            "user": w.user * math.log1p(c.user),
            "intent": w.intent * cosine(user_categories or {}, c.categories),
        }

    def rank(self, candidates: Iterable[Candidate], k: int = 10,
             user_categories: Mapping[str, float] | None = None) -> list[Suggestion]:
        """The ``k`` best candidates with a positive score, best first."""
        scored = []
        for c in candidates:
            signals = self.signals(c, user_categories)
            score = sum(signals.values())
            if score > 0:
                scored.append(Suggestion(c.query, c.text or c.query, score, signals, c))
        scored.sort(key=lambda s: (-s.score, s.query))
        return scored[:k]
