"""The searchable catalog and hybrid retrieval over it.

``CatalogIndexer`` holds the items, one vector per title (frozen item encoder) and a
BM25 index over the same titles; it takes ``catalog.items`` upserts and persists to a
directory so a restart re-encodes nothing. ``HybridRetriever`` takes the union of the
dense and the BM25 candidates and scores each with a ``Fusion`` of their signals (each
dense part's cosine, BM25, shared codes), weighted for the query (see ``relevo.search.fusion``).

>>> from relevo.search.encoder import _Fixed
>>> catalog = CatalogIndexer(_Fixed("fixed", [[1.0, 0.0]]))
>>> catalog.upsert([{"item_id": "k1", "titles": {"en": "Acme kettle"}, "category": "Kitchen",
...                  "regions": ["GB"]}, {"item_id": "bad"}])
[({'item_id': 'bad'}, "item 'bad': titles must map at least one locale to a title")]
>>> [(hit.item_id, hit.locale) for hit in HybridRetriever(catalog).retrieve("acme", k=3)]
[('k1', 'en')]
>>> catalog.upsert([{"item_id": "k1", "deleted": True}]), len(catalog)
([], 0)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from relevo.search.catalog import InvalidItem, deleted_id, validate_item
from relevo.search.encoder import TextEncoder
from relevo.search.fusion import Fusion, code_signals, code_tokens, query_conditions
from relevo.search.index import VectorIndex
from relevo.search.lexical import BM25Index, tokens

log = logging.getLogger(__name__)
_SEP = "\x1f"  # between item id and locale in a row key; never in either


def row_key(item_id: str, locale: str) -> str:
    return f"{item_id}{_SEP}{locale}"


def split_row_key(key: str) -> tuple[str, str]:
    item_id, _, locale = key.rpartition(_SEP)
    return item_id, locale


class CatalogIndexer:
    """Items by id, plus a vector and a BM25 row for each of their titles.

    Changes hold ``lock`` (new titles are encoded before it is taken); readers in other
    threads (``relevo.search.service``'s searches) hold it while they read the indexes.
    """

    def __init__(self, encoder: TextEncoder, ann_threshold: int = 50_000) -> None:
        self.encoder = encoder
        self.items: dict[str, dict] = {}
        self.vectors = VectorIndex(encoder.dim, ann_threshold=ann_threshold)
        self.lexical = BM25Index()
        self.version = 0  # bumped on every change, so derived views know to refresh
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.items)

    def upsert(self, raw_items: Iterable[object]) -> list[tuple[object, str]]:
        """Validate and index ``raw_items`` (tombstones delete); returns the rejected ones with their reasons.
        The last record of an item in the batch wins."""
        rejected, valid, deleted = [], {}, set()
        for raw in raw_items:
            try:
                if isinstance(raw, InvalidItem):
                    raise raw
                if (gone := deleted_id(raw)) is not None:
                    valid.pop(gone, None)
                    deleted.add(gone)
                    continue
                item = validate_item(raw)
                valid[item["item_id"]] = item
                deleted.discard(item["item_id"])
            except InvalidItem as exc:
                rejected.append((raw, str(exc)))
        if deleted:
            self.remove(deleted)
        self._index(list(valid.values()))
        return rejected

    def _index(self, items: list[dict]) -> None:
        if not items:
            return
        keys = [row_key(item["item_id"], loc) for item in items for loc in item["titles"]]
        texts = [title for item in items for title in item["titles"].values()]
        vectors = self.encoder.encode_items(texts)
        with self.lock:
            self.remove([item["item_id"] for item in items])
            self.vectors.upsert(keys, vectors)
            self.lexical.upsert(keys, texts)
            self.items.update((item["item_id"], item) for item in items)
            self.version += 1

    def remove(self, item_ids: Iterable[str]) -> None:
        item_ids = list(item_ids)
        with self.lock:
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
        tmp = directory / "items.jsonl.tmp"
        with self.lock:  # saving compacts the vectors
            self.vectors.save(directory / "vectors")
            tmp.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in self.items.values()))
        tmp.replace(directory / "items.jsonl")
        (directory / "encoder.json").write_bytes(orjson.dumps({"name": self.encoder.name}))
        log.info("saved %d items to %s", len(self.items), directory)

    @staticmethod
    def saved_encoder(directory: Path | str) -> str | None:
        """The name of the encoder the catalog in ``directory`` was indexed with (None: no catalog)."""
        path = Path(directory) / "encoder.json"
        return orjson.loads(path.read_bytes())["name"] if (Path(directory) / "items.jsonl").exists() else None

    @staticmethod
    def saved_items(directory: Path | str) -> list[dict]:
        """The items saved in ``directory``, without their vectors."""
        with open(Path(directory) / "items.jsonl", "rb") as fh:
            return [orjson.loads(line) for line in fh]

    @classmethod
    def open(cls, directory: Path | str, encoder: TextEncoder, ann_threshold: int = 50_000) -> CatalogIndexer:
        """The catalog saved in ``directory`` (empty if there is none yet)."""
        directory = Path(directory)
        catalog = cls(encoder, ann_threshold)
        if not (directory / "items.jsonl").exists():
            return catalog
        saved = cls.saved_encoder(directory)
        if saved != encoder.name:
            raise ValueError(f"{directory} was indexed with encoder {saved!r}, not {encoder.name!r}; "
                             f"open it with {saved!r} or delete it to re-index")
        catalog.vectors = VectorIndex.load(directory / "vectors")
        catalog.vectors.ann_threshold = ann_threshold
        catalog.items = {item["item_id"]: item for item in cls.saved_items(directory)}
        keys = [row_key(i, loc) for i, item in catalog.items.items() for loc in item["titles"]]
        catalog.lexical.upsert(keys, [catalog.items[split_row_key(k)[0]]["titles"][split_row_key(k)[1]]
                                      for k in keys])
        log.info("opened %d items from %s", len(catalog.items), directory)
        return catalog


@dataclass(frozen=True)
class Hit:
    """One retrieved title: its item, locale, fused score, the weighted mean of its dense
    cosines and its normalised BM25. The score is in cosine units: the fusion's logit over
    the query's total dense weight, so the prior gives the weighted cosine plus its lexical
    bonus, and the first ranker's other signals keep their scale beside it."""

    item_id: str
    locale: str
    score: float
    dense: float
    lexical: float


@dataclass
class Candidates:
    """A query's candidate titles (row keys) and the columns a ``Fusion`` scores them by."""

    keys: list[str]
    columns: dict[str, np.ndarray]


class HybridRetriever:
    """Dense and lexical candidates, scored together by ``fusion`` (default: ``Fusion.prior``)."""

    def __init__(self, catalog: CatalogIndexer, fusion: Fusion | None = None, candidates: int = 100) -> None:
        self.catalog, self.candidates = catalog, candidates
        self.fusion = fusion or Fusion.prior(catalog.encoder)
        missing = set(self.fusion.parts) - {name for name, _, _ in catalog.encoder.layout}
        if missing or self.fusion.query_towers != catalog.encoder.query_towers:
            raise ValueError(f"fusion fit for encoder {self.fusion.encoder!r} with query towers "
                             f"{self.fusion.query_towers} does not fit the catalog's {catalog.encoder.name!r} "
                             f"with {catalog.encoder.query_towers}")

    def candidates_for(self, query: str, query_vector: np.ndarray | None = None, fetch: int | None = None,
                       exclude: Collection[str] = ()) -> Candidates:
        """The union of the ``fetch`` best dense and BM25 titles (``exclude``: row keys to drop),
        with every signal and condition the fusion reads."""
        catalog, fetch = self.catalog, (fetch or self.candidates) + len(exclude)
        if query_vector is None:
            query_vector = catalog.encoder.encode_queries([query])[0]
        conditions = query_conditions(query)
        probe = catalog.encoder.probe(query_vector, self.fusion.dense_weights(conditions))
        dense = [key for key, _ in catalog.vectors.search(probe[None], fetch)[0]]
        lexical_scores = catalog.lexical.scores(query)
        lexical = [key for key, _ in catalog.lexical.top(lexical_scores, fetch)]
        keys = [key for key in dict.fromkeys([*dense, *lexical]) if key not in exclude]
        if not keys:
            return Candidates([], {})
        rows = np.stack([catalog.vectors.vector(key) for key in keys])
        cosines = catalog.encoder.part_cosines(rows, query_vector)
        columns = {f"dense:{name}": part for name, part in cosines.items()}
        lex = catalog.lexical.score_of(lexical_scores, keys)
        columns["lexical"] = lex / lex.max() if lex.max() > 0 else lex
        columns.update(code_signals(code_tokens(tokens(query)), [code_tokens(catalog.lexical.tokens_of(key))
                                                                  for key in keys]))
        columns.update({name: np.float32(value) for name, value in conditions.items()})
        return Candidates(keys, columns)

    def retrieve(self, query: str, k: int, query_vector: np.ndarray | None = None,
                 exclude: Collection[str] = ()) -> list[Hit]:
        """The best ``k`` titles for ``query`` (one hit per title, not yet per item).

        ``query_vector`` skips encoding (the caller has it); ``exclude`` drops row keys.
        """
        found = self.candidates_for(query, query_vector, exclude=exclude)
        if not found.keys:
            return []
        fused = self.fusion.score(found.columns)
        weights = self.fusion.dense_weights(found.columns)
        total = sum(weights.values()) or 1.0
        dense = np.zeros(len(found.keys), np.float32)
        for part, weight in weights.items():
            dense += weight / total * found.columns[f"dense:{part}"]
        order = np.argsort(-fused, kind="stable")[:k]
        return [Hit(*split_row_key(found.keys[i]), float(fused[i] / total), float(dense[i]),
                    float(found.columns["lexical"][i])) for i in order]
