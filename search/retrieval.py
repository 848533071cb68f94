"""The searchable catalog and hybrid retrieval over it.

``CatalogIndexer`` holds the items, one vector per title (frozen item encoder) and a
BM25 index over the same titles; it takes ``catalog.items`` upserts and persists to a
directory so a restart re-encodes nothing. ``HybridRetriever`` fuses dense cosine
with max-normalised BM25 over the union of both candidate lists; the lexical weight is
in units of the encoder's ``score_spread``, so one setting suits every encoder.

>>> from relevo.search.encoder import _Fixed
>>> catalog = CatalogIndexer(_Fixed("fixed", [[1.0, 0.0]]))
>>> catalog.upsert([{"item_id": "k1", "titles": {"en": "Acme kettle"}, "category": "Kitchen",
...                  "regions": ["GB"]}, {"item_id": "bad"}])
[({'item_id': 'bad'}, "item 'bad': titles must map at least one locale to a title")]
>>> [(hit.item_id, hit.locale) for hit in HybridRetriever(catalog).retrieve("acme", k=3)]
[('k1', 'en')]
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from relevo.search.catalog import InvalidItem, validate_item
from relevo.search.encoder import TextEncoder
from relevo.search.index import VectorIndex
from relevo.search.lexical import BM25Index

log = logging.getLogger(__name__)
_SEP = "\x1f"  # between item id and locale in a row key; never in either


def row_key(item_id: str, locale: str) -> str:
    return f"{item_id}{_SEP}{locale}"


def split_row_key(key: str) -> tuple[str, str]:
    item_id, _, locale = key.rpartition(_SEP)
    return item_id, locale


class CatalogIndexer:
    """Items by id, plus a vector and a BM25 row for each of their titles."""

    def __init__(self, encoder: TextEncoder, ann_threshold: int = 50_000) -> None:
        self.encoder = encoder
        self.items: dict[str, dict] = {}
        self.vectors = VectorIndex(encoder.dim, ann_threshold=ann_threshold)
        self.lexical = BM25Index()
        self.version = 0  # bumped on every change, so derived views know to refresh

    def __len__(self) -> int:
        return len(self.items)

    def upsert(self, raw_items: Iterable[object]) -> list[tuple[object, str]]:
        """Validate and index ``raw_items``; returns the rejected ones with their reasons."""
        rejected, valid = [], {}
        for raw in raw_items:
            try:
                if isinstance(raw, InvalidItem):
                    raise raw
                item = validate_item(raw)
                valid[item["item_id"]] = item
            except InvalidItem as exc:
                rejected.append((raw, str(exc)))
        self._index(list(valid.values()))
        return rejected

    def _index(self, items: list[dict]) -> None:
        if not items:
            return
        self.remove([item["item_id"] for item in items])
        keys = [row_key(item["item_id"], loc) for item in items for loc in item["titles"]]
        texts = [title for item in items for title in item["titles"].values()]
        self.vectors.upsert(keys, self.encoder.encode_items(texts))
        self.lexical.upsert(keys, texts)
        self.items.update((item["item_id"], item) for item in items)
        self.version += 1

    def remove(self, item_ids: Iterable[str]) -> None:
        item_ids = list(item_ids)
        keys = [row_key(i, loc) for i in item_ids if i in self.items for loc in self.items[i]["titles"]]
        self.vectors.remove(keys)
        self.lexical.remove(keys)
        for item_id in item_ids:
            self.items.pop(item_id, None)
        self.version += 1

    def save(self, directory: Path | str) -> None:
        """Items and vectors to ``directory`` (the BM25 index is rebuilt on open: no encoding)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vectors.save(directory / "vectors")
        tmp = directory / "items.jsonl.tmp"
        tmp.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in self.items.values()))
        tmp.replace(directory / "items.jsonl")
        (directory / "encoder.json").write_bytes(orjson.dumps({"name": self.encoder.name}))
        log.info("saved %d items to %s", len(self.items), directory)

    @classmethod
    def open(cls, directory: Path | str, encoder: TextEncoder, ann_threshold: int = 50_000) -> CatalogIndexer:
        """The catalog saved in ``directory`` (empty if there is none yet)."""
        directory = Path(directory)
        catalog = cls(encoder, ann_threshold)
        if not (directory / "items.jsonl").exists():
            return catalog
        saved = orjson.loads((directory / "encoder.json").read_bytes())["name"]
        if saved != encoder.name:
            raise ValueError(f"{directory} was indexed with encoder {saved!r}, not {encoder.name!r}; "
                             f"open it with {saved!r} or delete it to re-index")
        catalog.vectors = VectorIndex.load(directory / "vectors")
        catalog.vectors.ann_threshold = ann_threshold
        with open(directory / "items.jsonl", "rb") as fh:
            catalog.items = {item["item_id"]: item for item in map(orjson.loads, fh)}
        keys = [row_key(i, loc) for i, item in catalog.items.items() for loc in item["titles"]]
        catalog.lexical.upsert(keys, [catalog.items[split_row_key(k)[0]]["titles"][split_row_key(k)[1]]
                                      for k in keys])
        log.info("opened %d items from %s", len(catalog.items), directory)
        return catalog


@dataclass(frozen=True)
class Hit:
    """One retrieved title: its item, locale, fused score and the two signals fused."""

    item_id: str
    locale: str
    score: float
    dense: float
    lexical: float


class HybridRetriever:
    """Dense and lexical candidates, fused:
    ``cosine + lexical_weight * encoder.score_spread * bm25 / max bm25``.

    The default weight (3.5) was the best on the cross-lingual bench for USE alone
    (0.3 / 0.091) and for USE+E5 (0.1 / 0.027); see bench/RESULTS.md.
    """

    def __init__(self, catalog: CatalogIndexer, lexical_weight: float = 3.5, candidates: int = 100) -> None:
        self.catalog, self.lexical_weight, self.candidates = catalog, lexical_weight, candidates

    def retrieve(self, query: str, k: int, query_vector: np.ndarray | None = None,
                 exclude: Collection[str] = ()) -> list[Hit]:
        """The best ``k`` titles for ``query`` (one hit per title, not yet per item).

        ``query_vector`` skips encoding (the caller has it); ``exclude`` drops row keys.
        """
        catalog = self.catalog
        if query_vector is None:
            query_vector = catalog.encoder.encode_queries([query])[0]
        fetch = self.candidates + len(exclude)
        dense = dict(catalog.vectors.search(query_vector[None], fetch)[0])
        lexical_scores = catalog.lexical.scores(query) if self.lexical_weight else None
        lexical: dict[str, float] = {}
        if lexical_scores is not None:
            lexical = dict(catalog.lexical.top(lexical_scores, fetch))
        keys = [key for key in dict.fromkeys([*dense, *lexical]) if key not in exclude]
        if not keys:
            return []
        missing = [key for key in keys if key not in dense]
        if missing:
            dense.update(zip(missing, (np.stack([catalog.vectors.vector(key) for key in missing])
                                       @ query_vector).tolist(), strict=True))
        lex = (catalog.lexical.score_of(lexical_scores, keys) if lexical_scores is not None
               else np.zeros(len(keys), np.float32))
        lex = lex / lex.max() if lex.max() > 0 else lex
        lex_scale = self.lexical_weight * catalog.encoder.score_spread
        fused = np.array([dense[key] for key in keys], np.float32) + lex_scale * lex
        order = np.argsort(-fused, kind="stable")[:k]
        return [Hit(*split_row_key(keys[i]), float(fused[i]), float(dense[keys[i]]), float(lex[i]))
                for i in order]
