"""A vector index over unit vectors keyed by string: exact below a size threshold,
faiss HNSW (approximate) above it; incremental upserts; saved and loaded from disk.

Rows are append-only: an upsert of a known key marks its old row dead and appends a
new one (HNSW cannot update in place); dead rows are dropped from results and
compacted away when they pile up.

>>> index = VectorIndex(dim=2)
>>> index.upsert(["a", "b"], np.array([[1, 0], [0, 1]], np.float32))
>>> index.upsert(["a"], np.array([[0.6, 0.8]], np.float32))
>>> [(key, round(score, 2)) for key, score in index.search(np.array([[0, 1]], np.float32), k=5)[0]]
[('b', 1.0), ('a', 0.8)]
>>> len(index)
2
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import orjson

log = logging.getLogger(__name__)


class VectorIndex:
    """Inner-product search over L2-normalised rows (so scores are cosines)."""

    def __init__(self, dim: int, ann_threshold: int = 50_000, hnsw_m: int = 32,
                 ef_search: int = 128, ef_construction: int = 64) -> None:
        self.dim = dim
        self.ann_threshold = ann_threshold
        self._hnsw_params = (hnsw_m, ef_search, ef_construction)
        self._buffer = np.zeros((0, dim), np.float32)  # grows by doubling; rows past len(_keys) unused
        self._keys: list[str | None] = []  # None marks a dead row
        self._row: dict[str, int] = {}
        self._ann: faiss.Index | None = None

    @property
    def _vectors(self) -> np.ndarray:
        return self._buffer[:len(self._keys)]

    def _append(self, vectors: np.ndarray) -> None:
        used = len(self._keys)
        if used + len(vectors) > len(self._buffer):
            grown = np.zeros((max(2 * len(self._buffer), used + len(vectors), 1024), self.dim), np.float32)
            grown[:used] = self._buffer[:used]
            self._buffer = grown
        self._buffer[used:used + len(vectors)] = vectors

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, key: str) -> bool:
        return key in self._row

    @property
    def uses_ann(self) -> bool:
        return len(self._row) >= self.ann_threshold

    def vector(self, key: str) -> np.ndarray:
        return self._vectors[self._row[key]]

    def upsert(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace the vectors of ``keys``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        latest = {key: i for i, key in enumerate(keys)}  # a key repeated in one batch: last wins
        self.remove(list(latest))
        rows = list(latest.values())
        start = len(self._keys)
        self._append(vectors[rows])
        self._keys.extend(latest)
        self._row.update({key: start + i for i, key in enumerate(latest)})
        if self._ann is not None:
            self._ann.add(vectors[rows])

    def remove(self, keys: Sequence[str]) -> None:
        """Forget ``keys`` (unknown keys are ignored)."""
        for key in keys:
            row = self._row.pop(key, None)
            if row is not None:
                self._keys[row] = None
        if len(self._keys) > 1000 and len(self._row) < 0.75 * len(self._keys):
            self._compact()

    def _compact(self) -> None:
        alive = [row for row, key in enumerate(self._keys) if key is not None]
        self._buffer = self._vectors[alive]
        self._keys = [self._keys[row] for row in alive]
        self._row = {key: row for row, key in enumerate(self._keys)}
        self._ann = None  # rebuilt on the next search

    def _build_ann(self) -> faiss.Index:
        m, ef_search, ef_construction = self._hnsw_params
        log.info("building HNSW over %d vectors", len(self._keys))
        ann = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
        ann.hnsw.efConstruction = ef_construction
        ann.hnsw.efSearch = ef_search
        ann.add(self._vectors)
        return ann

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query row, up to ``k`` (key, score) pairs, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if not self._row or k <= 0:
            return [[] for _ in queries]
        dead = len(self._keys) - len(self._row)
        fetch = min(k + dead, len(self._keys))
        if self.uses_ann:
            if self._ann is None:
                self._ann = self._build_ann()
            scores, rows = self._ann.search(queries, fetch)
        else:
            all_scores = queries @ self._vectors.T
            rows = np.argpartition(-all_scores, fetch - 1, axis=1)[:, :fetch]
            scores = np.take_along_axis(all_scores, rows, axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")
            rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
        results = []
        for row_ids, row_scores in zip(rows, scores, strict=True):
            hits = [(self._keys[r], float(s)) for r, s in zip(row_ids, row_scores, strict=True)
                    if r >= 0 and self._keys[r] is not None]
            results.append(hits[:k])
        return results

    def save(self, directory: Path | str) -> None:
        """Write the index atomically: a reader never sees a half-written directory."""
        directory = Path(directory)
        if len(self._row) < len(self._keys):
            self._compact()
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "vectors.npy", self._vectors)
        meta = {"dim": self.dim, "ann_threshold": self.ann_threshold, "hnsw": self._hnsw_params,
                "keys": self._keys}
        (tmp / "meta.json").write_bytes(orjson.dumps(meta))
        if self._ann is not None:
            faiss.write_index(self._ann, str(tmp / "hnsw.faiss"))
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path | str) -> VectorIndex:
        directory = Path(directory)
        meta = orjson.loads((directory / "meta.json").read_bytes())
        index = cls(meta["dim"], meta["ann_threshold"], *meta["hnsw"])
        index._buffer = np.load(directory / "vectors.npy")
        index._keys = meta["keys"]
        index._row = {key: row for row, key in enumerate(index._keys)}
        if (directory / "hnsw.faiss").exists():
            index._ann = faiss.read_index(str(directory / "hnsw.faiss"))
            index._ann.hnsw.efSearch = meta["hnsw"][1]
        return index
