"""Rank a caller's list: the serving model on the examples builder's own features, else a fallback.

``rank(serving, features, shown)`` orders ``shown["results"]`` (a search as the event
contract writes it: ``ts``, ``user_id``, ``session_id``, ``region``, optional ``prices``)
with the serving model (``LiveModel.serving``, None before the first version) on the
features ``ContextState.features`` computes for ``shown``, the one rule the examples builder
snapshots for training, so the model scores exactly what it learned from. It reads
neither the context nor the live model, so a server computes the features where its
context changes and ranks in another thread. Each item gets an explanation: with a
model, the features whose removal (set to 0) would change its score most; without one,
the signals the fallback ordered by. The fallbacks, strongest first:

- ``session_rule``: items the session touched come first, most recent first;
- ``region_counts``: the rest by the region's decayed per-item interactions (any item the
  region has seen, not a top-N list);
- ``given_order``: ties and unknown items keep the caller's order.

>>> from relevo.models.registry import Registry
>>> import tempfile
>>> from relevo.features.context import ContextState
>>> from relevo.models.live import LiveModel
>>> state, live = ContextState(), LiveModel(Registry(tempfile.mkdtemp()))
>>> base = {"ts": 2_000, "session_id": "s", "user_id": "u", "region": "FR"}
>>> state.observe({**base, "type": "click", "ts": 1_000, "item_id": "c", "kind": "click"})
>>> shown = {**base, "results": ["a", "b", "c"]}
>>> rank(live.serving, state.features(shown), shown).fallback
'session_rule'
>>> state.observe({**base, "type": "click", "ts": 1_000, "session_id": "t", "item_id": "b", "kind": "click"})
>>> shown = {**base, "session_id": "new", "results": ["a", "b", "c"]}
>>> ranked = rank(live.serving, state.features(shown), shown)
>>> ranked.fallback, ranked.order  # b and c were clicked in FR: the region's counts rank them first
('region_counts', [1, 2, 0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from relevo.features.context import FEATURES, RULE
from relevo.models.live import Loaded
from relevo.models.ranker import Batch, Ranker, collate

TOUCHED, POPULARITY, IMPRESSIONS = (FEATURES.index(name) for name in
                                    ("touched", "region_popularity", "item_impressions"))


@dataclass(frozen=True)
class Ranked:
    """A ranked list: ``order`` holds positions in the list given, best first; the rest is per given item."""

    order: list[int]
    scores: list[float]
    explanations: list[dict[str, float]]
    version: int | None
    fallback: str | None


def rank(serving: Loaded | None, features: list[list[float]], shown: dict[str, Any], explain: int = 3) -> Ranked:
    """``shown``'s results ranked by ``serving`` on their ``features`` (one row each), with ``explain``
    reasons per item; the fallback when no model serves."""
    if serving is None:
        return _fallback(features)
    example = {**shown, "items": shown["results"], "features": features}
    scores, contributions = occlusion(serving.model, example)
    explanations = []
    for row in contributions:
        top = sorted(range(len(FEATURES)), key=lambda f: -abs(row[f]))[:explain]
        explanations.append({FEATURES[f]: round(row[f], 4) for f in top if row[f]})
    return Ranked(_order(scores), scores, explanations, serving.version, None)


@torch.no_grad()
def occlusion(model: Ranker, example: dict[str, Any]) -> tuple[list[float], list[list[float]]]:
    """Each item's score and, per feature, how much of it the feature's value accounts for:
    the score minus the score with that feature set to 0 (items are scored one by one, so
    zeroing a feature for the whole list isolates it for each item). One batched pass."""
    model.eval()
    one = collate([example], model.config)
    width = one.features.shape[-1]
    occluded = one.features.repeat(width, 1, 1)
    every = torch.arange(width)
    occluded[every, :, every] = 0.0
    scores = model(one)[0]
    without = model(Batch(occluded, one.mask.repeat(width, 1), one.items.repeat(width, 1),
                          one.regions.repeat(width), one.users.repeat(width), one.labels.repeat(width, 1)))
    return scores.tolist(), (scores.unsqueeze(0) - without).T.tolist()


def _fallback(features: list[list[float]]) -> Ranked:
    """The session rule, then the region's counts, then the given order."""
    keys = [(row[RULE] if row[TOUCHED] else 0.0, row[POPULARITY], row[IMPRESSIONS]) for row in features]
    used = ("session_rule" if any(row[TOUCHED] for row in features)
            else "region_counts" if any(key[1] or key[2] for key in keys) else "given_order")
    order = sorted(range(len(keys)), key=lambda p: (tuple(-k for k in keys[p]), p))
    scores = [0.0] * len(keys)
    for rank_, p in enumerate(order):
        scores[p] = 1.0 / (1 + rank_)
    explanations = [{name: round(value, 4) for name, value in zip(
        ("session_rule", "region_popularity", "item_impressions"), key, strict=True) if value} for key in keys]
    return Ranked(order, scores, explanations, None, used)


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda p: (-scores[p], p))
