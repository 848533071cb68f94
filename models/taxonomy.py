"""Query intent as a category of Google's product taxonomy, in any language.

Each category's path (``Media > Books``) is embedded in every locale the encoder
covers; the category's vector is the mean of those, so a label set in 12 languages
becomes one language-neutral vector per category. A query's intent is its nearest
categories by cosine.

>>> from models.encoder import _Fixed
>>> taxonomy = {1: {"en-US": "Media", "de-DE": "Medien"}, 2: {"en-US": "Toys"}}
>>> IntentClassifier(taxonomy, _Fixed("f", [[1.0, 0.0]])).predict(np.array([[1.0, 0.0]]), k=1)
[[{'id': 1, 'path': 'Media', 'score': 1.0}]]
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from models.encoder import TextEncoder, unit_rows

log = logging.getLogger(__name__)

TAXONOMY = Path(__file__).resolve().parents[2] / "shared/data/google_taxonomy/google_taxonomy_parallel.tsv"
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

    def __init__(self, taxonomy: dict[int, dict[str, str]], encoder: TextEncoder) -> None:
        self.ids = list(taxonomy)
        self.paths = [labels.get(DISPLAY_LOCALE) or next(iter(labels.values())) for labels in taxonomy.values()]
        labels = [(row, text) for row, names in enumerate(taxonomy.values()) for text in names.values()]
        log.info("embedding %d category labels for %d categories", len(labels), len(self.ids))
        vectors = encoder.encode_items([text for _, text in labels])
        sums = np.zeros((len(self.ids), encoder.dim), np.float32)
        np.add.at(sums, [row for row, _ in labels], vectors)
        self.vectors = unit_rows(sums)

    def predict(self, query_vectors: np.ndarray, k: int = 3) -> list[list[dict]]:
        """For each query row, its ``k`` nearest categories with their cosine, best first."""
        scores = np.asarray(query_vectors, np.float32) @ self.vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[{"id": self.ids[c], "path": self.paths[c], "score": round(float(s[c]), 4)} for c in row]
                for row, s in zip(top, scores, strict=True)]
