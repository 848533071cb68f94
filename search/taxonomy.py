"""Query intent as a category of Google's product taxonomy, in any language.

Each category's path (``Media > Books``) is embedded in every locale the encoder
covers; the category's vector is the mean of those, so a label set in 12 languages
becomes one language-neutral vector per category. A query's intent is its nearest
categories by cosine. When the catalog is known, the categories of the items the
query retrieves vote too (a film title says little about "DVDs" by itself, but the
catalog items it matches are filed under a DVD category): each shop category name is
mapped once to its nearest taxonomy category.

>>> from relevo.search.encoder import _Fixed
>>> taxonomy = {1: {"en-US": "Media", "de-DE": "Medien"}, 2: {"en-US": "Toys"}}
>>> intents = IntentClassifier(taxonomy, _Fixed("f", [[1.0, 0.0]]))
>>> intents.predict(np.array([[1.0, 0.0]]), k=1)
[[{'id': 1, 'path': 'Media', 'score': 1.0}]]
>>> intents.predict(np.array([[1.0, 0.0]]), k=1, evidence=[["Spielzeug", "Spielzeug"]])[0][0]["score"]
2.0
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from relevo.core.settings import SHARED_DATA
from relevo.search.encoder import TextEncoder, unit_rows

log = logging.getLogger(__name__)

TAXONOMY = SHARED_DATA / "google_taxonomy" / "google_taxonomy_parallel.tsv"
# Taxonomy locales whose languages USE and E5 both cover.
LOCALES = ("en-US", "de-DE", "fr-FR", "es-ES", "it-IT", "nl-NL", "pl-PL", "pt-BR", "ru-RU", "tr-TR",
           "ja-JP", "zh-CN")
DISPLAY_LOCALE = "en-US"


def read_taxonomy(path: Path | str = TAXONOMY, max_depth: int = 3,
                  locales: tuple[str, ...] = LOCALES) -> dict[int, dict[str, str]]:
    """Category id -> {locale: path}, for paths at most ``max_depth`` levels deep."""
    taxonomy = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            labels = {loc: row[loc] for loc in locales if row.get(loc)}
            path = row.get(DISPLAY_LOCALE) or row.get("en-GB") or next(iter(labels.values()), "")
            if labels and path.count(" > ") < max_depth:
                taxonomy[int(row["id"])] = labels
    return taxonomy


class IntentClassifier:
    """Nearest taxonomy categories to a query vector (same encoder as the query)."""

    def __init__(self, taxonomy: dict[int, dict[str, str]], encoder: TextEncoder,
                 evidence_weight: float = 1.0) -> None:
        self.encoder, self.evidence_weight = encoder, evidence_weight
        self._shop_categories: dict[str, int] = {}
        self.ids = list(taxonomy)
        self.paths = [labels.get(DISPLAY_LOCALE) or next(iter(labels.values())) for labels in taxonomy.values()]
        labels = [(row, text) for row, names in enumerate(taxonomy.values()) for text in names.values()]
        log.info("embedding %d category labels for %d categories", len(labels), len(self.ids))
        vectors = encoder.encode_items([text for _, text in labels])
        sums = np.zeros((len(self.ids), encoder.dim), np.float32)
        np.add.at(sums, [row for row, _ in labels], vectors)
        self.vectors = unit_rows(sums)

    def category_row(self, shop_category: str) -> int:
        """The taxonomy row nearest to a shop's own category name (cached)."""
        if shop_category not in self._shop_categories:
            vector = self.encoder.encode_items([shop_category.replace("_", " ")])[0]
            self._shop_categories[shop_category] = int(np.argmax(self.vectors @ vector))
        return self._shop_categories[shop_category]

    def predict(self, query_vectors: np.ndarray, k: int = 3,
                evidence: list[list[str]] | None = None) -> list[list[dict]]:
        """For each query row, its ``k`` best categories, best first: cosine to the label,
        plus ``evidence_weight`` times the rank-weighted share of votes from ``evidence``
        (the shop categories of the query's retrieved items, best first)."""
        scores = np.asarray(query_vectors, np.float32) @ self.vectors.T
        for row, categories in enumerate(evidence or []):
            weights = 1.0 / np.arange(1, len(categories) + 1)
            for category, weight in zip(categories, weights, strict=True):
                scores[row, self.category_row(category)] += self.evidence_weight * weight / weights.sum()
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[{"id": self.ids[c], "path": self.paths[c], "score": round(float(s[c]), 4)} for c in row]
                for row, s in zip(top, scores, strict=True)]
