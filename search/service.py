"""Search: hybrid retrieval, then a deterministic, explainable first ranker over live
user and region features, then localisation (title in the user's locale, regional
price, items not sold in the region filtered out).

The first ranker is a weighted sum of signals in [0, 1]; its ``score`` returns the
explanation (each signal's value, weight and contribution) beside the score. When a
``Reranker`` is attached, it re-orders the top
results (any ``Reranker``; the learning loop's is ``relevo.models.rerank``) and adds its
score to each explanation.

>>> ranker = FirstRanker()
>>> item = {"item_id": "k1", "titles": {"de-DE": "Wasserkocher"}, "category": "Kitchen", "brand": "Acme"}
>>> score, why = ranker.score({"text": 0.8}, item, {"locale": "de-AT", "region_items": {"k1": 4.0},
...                                                   "user_categories": {"Kitchen": 2.0, "Toys": 1.0}})
>>> round(score, 3), sorted(why)
(1.025, ['locale', 'region_popularity', 'text', 'user_category'])
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from relevo.search.locale import Translator, language_of, localized_title, price_for
from relevo.search.query import QueryUnderstanding
from relevo.search.retrieval import CatalogIndexer, Hit, HybridRetriever

log = logging.getLogger(__name__)

FeatureSource = Callable[[str | None, str | None], Awaitable[tuple[dict | None, dict | None]]]


# The live features ``SearchService.context`` reads: all a search needs from the online store.
CONTEXT_USER_FIELDS = ("items", "categories", "locale", "session_items")
CONTEXT_REGION_FIELDS = ("items", "categories")


class Reranker(Protocol):
    """A second stage: re-orders the first ranker's top ``depth`` results for a user and session.
    Awaited on the event loop; it runs its own CPU work off the loop."""

    depth: int

    async def rerank(self, results: list[dict[str, Any]], search: dict[str, Any]) -> list[dict[str, Any]]:
        """``results`` (``item_id``, ``price``, ``explanation``), best first, re-ordered."""
        ...

DEFAULT_WEIGHTS = {"text": 1.0, "region_popularity": 0.1, "region_category": 0.05, "user_category": 0.1,
                   "user_brand": 0.05, "session": 0.1, "locale": 0.025}


def _share(scores: Mapping[str, float] | None, key: str | None) -> float:
    """``scores[key]`` relative to the largest score, in [0, 1]."""
    if not scores or key is None or key not in scores:
        return 0.0
    top = max(scores.values())
    return max(0.0, scores[key] / top) if top > 0 else 0.0


@dataclass
class FirstRanker:
    """Weighted sum of text match, region popularity and category mix, user category
    and brand affinity, session context and locale match."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def features(self, query_features: Mapping, item: Mapping, context: Mapping) -> dict[str, float]:
        """Each signal of ``item`` for this query and context, in [0, 1] (text may exceed 1)."""
        session = context.get("session_items") or ()
        locale = context.get("locale")
        return {
            "text": float(query_features.get("text", 0.0)),
            "region_popularity": _share(context.get("region_items"), item["item_id"]),
            "region_category": _share(context.get("region_categories"), item.get("category")),
            "user_category": _share(context.get("user_categories"), item.get("category")),
            "user_brand": _share(context.get("user_brands"), item.get("brand")),
            "session": 1.0 if item["item_id"] in session else
            0.5 * (item.get("category") in context.get("session_categories", ())),
            "locale": float(bool(locale) and any(language_of(t) == language_of(locale) for t in item["titles"])),
        }

    def score(self, query_features: Mapping, item: Mapping, context: Mapping) -> tuple[float, dict]:
        """(score, explanation): the explanation lists every signal that contributed."""
        values = self.features(query_features, item, context)
        why = {name: {"value": round(v, 4), "weight": self.weights.get(name, 0.0),
                      "contribution": round(v * self.weights.get(name, 0.0), 4)}
               for name, v in values.items() if v and self.weights.get(name, 0.0)}
        return sum(v["contribution"] for v in why.values()), why


class SearchService:
    """What ``GET /v1/search`` and ``GET /v1/query/understand`` call (``app.state.search``).

    ``features(user_id, region)`` is an optional async callable returning the live
    (user dict | None, region dict | None) from the online store. Pass the same
    ``retriever`` to the ``understanding`` so intent sees what search retrieves.

    The CPU work of a search (encoding the query, retrieval, understanding, the first
    ranker) runs in ``executor``'s threads (None: the loop's default executor), so the
    event loop answers other requests meanwhile: numpy and the encoders release the GIL
    in their kernels, and Python code shares it at the interpreter's switch interval.
    The encoder's weights are only read; the indexes and items are read under
    ``catalog.lock``, which every catalog change holds. The re-ranker is called from the
    loop: the region contexts it reads change on the loop, under no lock.
    """

    def __init__(self, catalog: CatalogIndexer, understanding: QueryUnderstanding | None = None,
                 ranker: FirstRanker | None = None, features: FeatureSource | None = None,
                 translator: Translator | None = None, retriever: HybridRetriever | None = None,
                 reranker: Reranker | None = None, executor: Executor | None = None) -> None:
        self.catalog = catalog
        self.executor = executor
        self.reranker = reranker  # the learned second stage; None: the first ranker's order stands
        self.retriever = retriever or HybridRetriever(catalog)
        self.understanding = understanding or QueryUnderstanding(catalog, retriever=self.retriever)
        self.ranker = ranker or FirstRanker()
        self.features = features
        self.translator = translator
        # One query is too small to gain from BLAS threads, and with other processes on
        # the cores threaded BLAS calls stall (17 ms instead of 0.2 ms for the intent matmul).
        self._blas = ThreadpoolController()

    @property
    def retrieval(self) -> dict:
        """How queries are matched: the encoder, the towers encoding its queries, the fusion."""
        fusion = self.retriever.fusion
        return {"encoder": self.catalog.encoder.name, "query_towers": self.catalog.encoder.query_towers,
                "fusion": fusion.about.get("kind", "fit")}

    async def understand(self, query: str, locale: str | None = None) -> dict:
        """Language, intent and entities of ``query`` (in a search thread, like ``search``)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._understand, query, locale)

    def _understand(self, query: str, locale: str | None) -> dict:
        with self._blas.limit(limits=1, user_api="blas"), self.catalog.lock:
            return self.understanding.understand(query, locale)

    def context(self, user: dict | None, region_features: dict | None, locale: str | None) -> dict:  # reads CONTEXT_*
        """The ranker's context from the live feature dicts (see relevo.features.online for their shapes)."""
        user, region_features = user or {}, region_features or {}
        items = self.catalog.items
        brands: dict[str, float] = {}
        for item_id, weight in (user.get("items") or {}).items():
            brand = items.get(item_id, {}).get("brand")
            if brand:
                brands[brand] = brands.get(brand, 0.0) + weight
        session = user.get("session_items") or []
        return {"locale": locale or user.get("locale"), "region_items": region_features.get("items"),
                "region_categories": region_features.get("categories"),
                "user_categories": user.get("categories"), "user_brands": brands,
                "session_items": set(session),
                "session_categories": {items[i]["category"] for i in session if i in items}}

    def _candidates(self, query: str, query_vector: np.ndarray, region: str | None, k: int) -> dict[str, Hit]:
        """Best hit per item, sold in ``region``; widens the search once if too few survive."""
        for candidates in (self.retriever.candidates, self.retriever.candidates * 10):
            best: dict[str, Hit] = {}
            for hit in self.retriever.retrieve(query, candidates, query_vector):
                item = self.catalog.items.get(hit.item_id)
                if item is None or (region and region not in item["regions"]) or hit.item_id in best:
                    continue
                best[hit.item_id] = hit
            if len(best) >= k or candidates >= len(self.catalog.lexical):
                break
        return best

    async def search(self, query: str, user_id: str | None = None, region: str | None = None,
                     locale: str | None = None, k: int = 20, session_id: str | None = None) -> dict:
        """Ranked, localised results for ``query`` with explanations and query understanding."""
        started = time.perf_counter()
        region = region.upper() if region else None
        user, region_features = (await self.features(user_id, region)) if self.features else (None, None)
        loop = asyncio.get_running_loop()
        head, items, understanding, locale = await loop.run_in_executor(
            self.executor, self._first_stage, query, user, region_features, region, locale, k)
        if self.reranker is not None:  # from the loop: it reads the region contexts the loop's follower updates
            head = await self.reranker.rerank(head, {"session_id": session_id or user_id or "",
                                                     "user_id": user_id or "", "region": region or ""})
        results = []
        for result in head[:k]:
            item = items[result["item_id"]]
            results.append({"item_id": item["item_id"], **localized_title(item["titles"], locale, self.translator),
                            "category": item["category"], "brand": item["brand"], **result})
        return {"query": query, "region": region, "locale": locale, "user_id": user_id,
                "understanding": understanding, "results": results, "retrieval": self.retrieval,
                "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    def _first_stage(self, query: str, user: dict | None, region_features: dict | None, region: str | None,
                     locale: str | None, k: int) -> tuple[list[dict[str, Any]], dict[str, dict], dict, str | None]:
        """In a search thread: the first ranker's top results for ``query`` (as many as the re-ranker
        reads), the items they name, the query's understanding and the locale shown."""
        with self._blas.limit(limits=1, user_api="blas"):
            query_vector = self.catalog.encoder.encode_queries([query])[0]  # read-only model: no lock
            with self.catalog.lock:
                context = self.context(user, region_features, locale)
                hits = self._candidates(query, query_vector, region, k)
                understanding = self.understanding.understand(query, locale, query_vector, list(hits.values()))
                items = {item_id: self.catalog.items[item_id] for item_id in hits}
        ranked = []
        for item_id, hit in hits.items():
            query_features = {"text": hit.score, "dense": hit.dense, "lexical": hit.lexical}
            score, why = self.ranker.score(query_features, items[item_id], context)
            ranked.append((score, items[item_id], why))
        ranked.sort(key=lambda r: (-r[0], r[1]["item_id"]))
        depth = max(k, self.reranker.depth) if self.reranker else k
        head = [{"item_id": item["item_id"], "price": price_for(item, region), "score": round(score, 4),
                 "explanation": why} for score, item, why in ranked[:depth]]
        return head, items, understanding, context["locale"]
