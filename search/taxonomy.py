"""Query intent as a category of Google's product taxonomy, in any language.

Each category is embedded by its own name (the last step of its path, ``Books`` in
``Media > Books``) in every locale the encoder covers; the category's vector is the
mean of those, so a label set in 12 languages becomes one language-neutral vector
per category. Embedding whole paths made the generic top-level labels (``Hardware``,
``Media``), whose path is one short word, the nearest to many unrelated queries:
food names went to Hardware. A query's intent is its nearest categories by cosine.

When the catalog is known, the categories of the items the query retrieves vote too
(a film title says little about "DVDs" by itself, but the catalog items it matches are
filed under a DVD category), each shop category name mapped once to its nearest
taxonomy category by path. A vote counts by how informative its category is: its
share among the retrieved items times the share of the catalog it does not cover, so
in a catalog where every item is "Media", retrieving Media items says nothing.

>>> from relevo.search.encoder import _Fixed
>>> taxonomy = {1: {"en-US": "Media", "de-DE": "Medien"}, 2: {"en-US": "Toys"}}
>>> intents = IntentClassifier(taxonomy, _Fixed("f", [[1.0, 0.0]]))
>>> intents.predict(np.array([[1.0, 0.0]]), k=1)
[[{'id': 1, 'path': 'Media', 'score': 1.0}]]
>>> intents.predict(np.array([[1.0, 0.0]]), k=1, evidence=[["Spielzeug", "Spielzeug"]])[0][0]["score"]
3.0
>>> intents.predict(np.array([[1.0, 0.0]]), k=1, evidence=[["Spielzeug"]], prior={"Spielzeug": 0.75})[0][0]["score"]
1.5
>>> intents.predict(np.array([[1.0, 0.0]]), k=1, evidence=[["Spielzeug"]], prior={"Spielzeug": 1.0})[0][0]["score"]
1.0
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
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


def prefixes(path: str) -> list[str]:
    """A path and the paths of its ancestors, top first.

    >>> prefixes("Media > Music & Sound Recordings")
    ['Media', 'Media > Music & Sound Recordings']
    """
    steps = path.split(" > ")
    return [" > ".join(steps[:n]) for n in range(1, len(steps) + 1)]


def leaf(path: str) -> str:
    """A category's own name: the last step of its path."""
    return path.rsplit(" > ", 1)[-1]


class IntentClassifier:
    """Nearest taxonomy categories to a query vector (same encoder as the query), by name;
    shop categories map to the nearest category by whole path (a shop's "Music" is a
    department, as paths start with one; by name it would be "Music Boxes"). A path's
    vector is the sum of its steps' name vectors: embedding every locale's paths as
    well doubled the API's startup (18,500 more labels).

    With ``part``, only that part of a fused encoder's vectors is read (labels are encoded
    by it alone): intent does not need the slow part of a fusion to embed 38,000 labels.
    """

    def __init__(self, taxonomy: dict[int, dict[str, str]], encoder: TextEncoder,
                 evidence_weight: float = 2.0, part: str | None = None) -> None:
        self.evidence_weight = evidence_weight  # 2 was the best on bench.intent's dev titles
        self.encoder = encoder.part(part) if part else encoder
        self._columns = next(cols for name, cols, _ in encoder.layout if name == part) if part else slice(None)
        self._shop_categories: dict[str, int] = {}
        self.ids = list(taxonomy)
        self.paths = [labels.get(DISPLAY_LOCALE) or next(iter(labels.values())) for labels in taxonomy.values()]
        self.vectors = self._embed(taxonomy)
        row_of = {path: row for row, path in enumerate(self.paths)}
        steps = [[row_of[p] for p in prefixes(path) if p in row_of] for path in self.paths]
        self._path_vectors = unit_rows(np.stack([self.vectors[rows].sum(axis=0) for rows in steps]))

    def _embed(self, taxonomy: dict[int, dict[str, str]]) -> np.ndarray:
        """Each category's mean name vector over its locales."""
        labels = [(row, leaf(text)) for row, names in enumerate(taxonomy.values()) for text in names.values()]
        log.info("embedding %d category labels for %d categories", len(labels), len(self.ids))
        vectors = self.encoder.encode_items([text for _, text in labels])
        sums = np.zeros((len(self.ids), self.encoder.dim), np.float32)
        np.add.at(sums, [row for row, _ in labels], vectors)
        return unit_rows(sums)

    def category_row(self, shop_category: str) -> int:
        """The taxonomy row whose path is nearest to a shop's own category name (cached)."""
        if shop_category not in self._shop_categories:
            vector = self.encoder.encode_items([shop_category.replace("_", " ")])[0]
            self._shop_categories[shop_category] = int(np.argmax(self._path_vectors @ vector))
        return self._shop_categories[shop_category]

    def predict(self, query_vectors: np.ndarray, k: int = 3, evidence: list[list[str]] | None = None,
                prior: Mapping[str, float] | None = None) -> list[list[dict]]:
        """For each query row, its ``k`` best categories, best first: cosine to the label,
        plus ``evidence_weight`` times each shop category's vote from ``evidence`` (the shop
        categories of the query's retrieved items, best first): its rank-weighted share
        among them times the share of the catalog it does *not* cover (``1 - prior[c]``;
        ``prior`` omitted: every vote counts in full). A category every item has says nothing."""
        scores = unit_rows(np.asarray(query_vectors, np.float32)[:, self._columns]) @ self.vectors.T
        prior = prior or {}
        for row, categories in enumerate(evidence or []):
            ranks = 1.0 / np.arange(1, len(categories) + 1)
            shares: dict[str, float] = {}
            for category, weight in zip(categories, ranks / ranks.sum(), strict=True):
                shares[category] = shares.get(category, 0.0) + weight
            for category, share in shares.items():
                vote = share * (1.0 - prior.get(category, 0.0))
                if vote > 0:
                    scores[row, self.category_row(category)] += self.evidence_weight * vote
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[{"id": self.ids[c], "path": self.paths[c], "score": round(float(s[c]), 4)} for c in row]
                for row, s in zip(top, scores, strict=True)]
