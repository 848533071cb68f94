"""Query understanding: language, intent category, brand and attribute entities.

The language comes from ``relevo.core.language`` (the request's locale as a prior).

>>> extract_attributes("iphone 12 pro 128 GB schwarz")
[{'type': 'quantity', 'text': '128 gb'}]
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from relevo.core.language import identify
from relevo.core.text import normalize
from relevo.search.lexical import tokens
from relevo.search.retrieval import CatalogIndexer, Hit, HybridRetriever
from relevo.search.taxonomy import IntentClassifier

_QUANTITY = re.compile(r"\b(\d+(?:[.,]\d+)?)\s?(gb|tb|mb|mah|ml|cl|l|kg|g|mg|mm|cm|m|km|in|inch|zoll|w|kw|v|"
                       r"hz|ghz|mp|k|p|x|pcs|pack|st|stk|枚|個|本|cm)\b")


def extract_attributes(query: str) -> list[dict]:
    """Quantities with units (``128 gb``, ``500 ml``) in the normalised query."""
    return [{"type": "quantity", "text": f"{number} {unit}"}
            for number, unit in _QUANTITY.findall(normalize(query))]


class QueryUnderstanding:
    """Language, intent and entities of a query, against a catalog's vocabulary.

    ``catalog`` is read live (brands, BM25 vocabulary, the categories of the items a
    query retrieves with ``retriever``); ``intents`` is an ``IntentClassifier``, or None
    to skip intent.
    """

    def __init__(self, catalog: CatalogIndexer, intents: IntentClassifier | None = None,
                 max_brand_words: int = 4, evidence_items: int = 10,
                 retriever: HybridRetriever | None = None) -> None:
        self.catalog, self.intents, self.max_brand_words = catalog, intents, max_brand_words
        self.evidence_items = evidence_items
        self.retriever = retriever or HybridRetriever(catalog)
        self._stats: tuple[dict[str, str], dict[str, float]] = ({}, {})
        self._stats_version = -1

    def _catalog_stats(self) -> tuple[dict[str, str], dict[str, float]]:
        """Brands and category shares of the catalog, rebuilt when it changes."""
        if self._stats_version != self.catalog.version:
            items = self.catalog.items.values()
            brands = {normalize(item["brand"]): item["brand"] for item in items if item.get("brand")}
            counts = Counter(item["category"] for item in items if item["category"])
            self._stats = brands, {c: n / len(self.catalog) for c, n in counts.items()}
            self._stats_version = self.catalog.version
        return self._stats

    def brands(self) -> dict[str, str]:
        """Normalised brand -> brand as the catalog spells it."""
        return self._catalog_stats()[0]

    def category_shares(self) -> dict[str, float]:
        """Each shop category's share of the catalog's items: how little a vote for it says."""
        return self._catalog_stats()[1]

    def entities(self, query: str) -> dict[str, list]:
        """Brands named in the query, quantities, and model numbers the catalog knows."""
        words = normalize(query).split()
        brands = self.brands()
        found = [brands[" ".join(words[i:j])] for i in range(len(words))
                 for j in range(i + 1, min(len(words), i + self.max_brand_words) + 1)
                 if " ".join(words[i:j]) in brands]
        models = [{"type": "model", "text": t} for t in dict.fromkeys(tokens(query))
                  if any(c.isdigit() for c in t) and any(c.isalpha() for c in t)
                  and self.catalog.lexical.document_frequency(t) > 0]
        return {"brands": list(dict.fromkeys(found)), "attributes": extract_attributes(query) + models}

    def understand(self, query: str, locale: str | None = None, query_vector: np.ndarray | None = None,
                   hits: list[Hit] | None = None) -> dict:
        """Everything known about ``query``; pass ``query_vector`` and the retrieved
        ``hits`` if the caller has them already."""
        language = identify(query, locale)
        intent = []
        if self.intents is not None and query.strip():
            if query_vector is None:
                query_vector = self.catalog.encoder.encode_queries([query])[0]
            if hits is None:
                hits = self.retriever.retrieve(query, self.evidence_items, query_vector)
            categories = [self.catalog.items[h.item_id]["category"] for h in hits[:self.evidence_items]
                          if h.item_id in self.catalog.items and self.catalog.items[h.item_id]["category"]]
            intent = self.intents.predict(query_vector[None], k=3, evidence=[categories],
                                          prior=self.category_shares())[0]
        return {"query": query, "normalized": normalize(query),
                "language": {"code": language.code if language else None,
                             "confidence": language.confidence if language else 0.0},
                "intent": intent, "entities": self.entities(query)}
