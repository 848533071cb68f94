"""Search's second stage: the learned ranker re-orders the first ranker's top results.

The first stage (retrieval and ``FirstRanker``) decides what is relevant to the
query; the serving version of the learned ranker then orders its top ``depth``
results for this user, session and region. It sees the same point-in-time
features the examples builder computed for training (the region's
``ContextState``, which every serving replica follows from the region stream,
``relevo.models.examples.RegionContexts``), with the first stage's order
as the position shown, so what it learned from logged result lists applies.
Before any version is published the first stage's order stands.

>>> import tempfile
>>> from relevo.models.ranker import Ranker, RankerConfig
>>> from relevo.models.registry import Registry
>>> registry = Registry(tempfile.mkdtemp())
>>> state = ContextState()
>>> live = LiveModel(registry)
>>> reranker = LearnedReranker(live, lambda region: state)
>>> first = [{"item_id": "a", "price": 30.0, "explanation": {}}, {"item_id": "b", "price": 20.0, "explanation": {}}]
>>> search = {"ts": 2_000, "session_id": "s", "user_id": "u", "region": "FR"}
>>> import asyncio
>>> [r["item_id"] for r in asyncio.run(reranker.rerank(first, search))]  # no model yet: the first stage's order
['a', 'b']
>>> _ = registry.publish(Ranker(RankerConfig(item_buckets=16, user_buckets=4, region_buckets=4)),
...                      parent=None, window=(0, 1), figures={})
>>> live.refresh()
True
>>> state.observe({"type": "click", "ts": 1_000, "session_id": "s", "user_id": "u", "region": "FR",
...                "item_id": "b", "kind": "view"})
>>> reranked = asyncio.run(reranker.rerank(first, search))
>>> [r["item_id"] for r in reranked], sorted(reranked[0]["explanation"]["learned"])
(['b', 'a'], ['first_stage_position', 'model_version', 'score'])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from relevo.features.context import ContextState
from relevo.models.live import LiveModel


class LearnedReranker:
    """Orders the top ``depth`` first-stage results by the serving model's scores.

    The features are read on the calling event loop, where the region contexts change;
    the model scores in ``executor``'s threads (None: the loop's default executor).
    """

    def __init__(self, live: LiveModel, contexts: Callable[[str], ContextState], depth: int = 50,
                 executor: Executor | None = None) -> None:
        self.live, self.contexts, self.depth, self.executor = live, contexts, depth, executor

    async def rerank(self, results: list[dict[str, Any]], search: dict[str, Any]) -> list[dict[str, Any]]:
        """``results`` (dicts with ``item_id``, ``price``, ``explanation``), best first, re-ordered.

        ``search`` carries ``session_id``, ``user_id`` and ``region`` (``ts`` defaults to now).
        Results past ``depth`` keep their first-stage order after the re-ranked head.
        """
        head, tail = results[: self.depth], results[self.depth:]
        serving = self.live.serving
        if serving is None or len(head) < 2:
            return results
        shown = {"ts": int(time.time() * 1000), "device": "", "filters": None, **search,
                 "results": [r["item_id"] for r in head],
                 "prices": [r.get("price") or 0.0 for r in head]}
        example = {**shown, "items": shown["results"], "features": self.contexts(shown["region"]).features(shown)}
        scores = (await asyncio.get_running_loop().run_in_executor(self.executor, serving.model.scores,
                                                                   example)).tolist()
        for position, (result, score) in enumerate(zip(head, scores, strict=True)):
            result["explanation"] = {**result.get("explanation", {}), "learned": {
                "model_version": serving.version, "score": round(score, 4), "first_stage_position": position}}
        order = sorted(range(len(head)), key=lambda p: (-scores[p], p))
        return [head[p] for p in order] + tail
