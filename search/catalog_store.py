"""The catalog on disk under the data dir: opening it, loading items into it (what
``relevo catalog load`` runs), keeping it fed from the ``catalog.items`` topic, and
the search service built on it.

Layout under ``settings.data_dir``: ``catalog/`` (items + vectors, see
``CatalogIndexer.save``) and ``search-tuning/`` (a published fusion and the query tower it
needs, see ``relevo.models.query_tuning``). Text embeddings are cached per encoder under
``settings.cache_dir``'s ``embeddings/``, shared by every data dir on the machine: the
taxonomy's 18k category labels are the same for all of them (tens of seconds to encode).
A published fusion names the encoder it was fit for; the catalog is opened (re-indexed
once, if need be) with that encoder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from relevo.core.settings import Settings
from relevo.search.encoder import DEFAULT_ENCODER, load_encoder
from relevo.search.fusion import FUSION_FILE, Fusion
from relevo.search.query import QueryUnderstanding
from relevo.search.retrieval import CatalogIndexer, HybridRetriever
from relevo.search.service import FeatureSource, Reranker, SearchService
from relevo.search.taxonomy import TAXONOMY, IntentClassifier, read_taxonomy

log = logging.getLogger(__name__)
INTENT_PART = "use"  # intent reads this part of a fused encoder: fast, and what bench.intent measures


def catalog_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "catalog"


def tuning_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "search-tuning"


def served_encoder(data_dir: Path) -> str:
    """The encoder search serves with: the published fusion's, else the default."""
    path = tuning_dir(data_dir) / FUSION_FILE
    return Fusion.load(path).encoder if path.exists() else DEFAULT_ENCODER


def embeddings_dir(cache_dir: Path | None = None) -> Path:
    """Where text embeddings are cached: under ``cache_dir`` (default: ``RELEVO_CACHE_DIR``)."""
    return Path(cache_dir or Settings.from_env().cache_dir).expanduser() / "embeddings"


def open_catalog(data_dir: Path, encoder_name: str | None = None, cache_dir: Path | None = None) -> CatalogIndexer:
    """The saved catalog (empty if none), with an encoder whose item side is cached under
    ``embeddings_dir(cache_dir)`` (default: ``served_encoder``). A catalog saved with another
    encoder is re-indexed."""
    encoder_name = encoder_name or served_encoder(data_dir)
    encoder = load_encoder(encoder_name, cache_dir=embeddings_dir(cache_dir))
    directory = catalog_dir(data_dir)
    saved = CatalogIndexer.saved_encoder(directory)
    if saved is None or saved == encoder.name:
        return CatalogIndexer.open(directory, encoder)
    log.warning("the catalog in %s was indexed with %r; re-indexing it with %r (once)", directory, saved, encoder.name)
    catalog = CatalogIndexer(encoder)
    _upsert_with_progress(catalog, CatalogIndexer.saved_items(directory))
    catalog.save(directory)
    return catalog


class CatalogConsumer:
    """Consumer of ``catalog.items`` records: upserts each batch (idempotent: an item
    replaces its earlier version) and saves at most every ``save_every_s`` seconds.

    ``process`` returns the rejected items with their reasons, for the DLQ. Upserts and
    saves run in a thread, so encoding new titles never holds up the caller's event loop;
    the catalog's lock keeps searches in other threads from reading a half-made change.
    """

    name = "catalog"

    def __init__(self, catalog: CatalogIndexer, directory: Path, save_every_s: float = 30.0) -> None:
        self.catalog, self.directory, self.save_every_s = catalog, Path(directory), save_every_s
        self._saved_at = time.monotonic()

    async def process(self, items: Sequence[object]) -> list[tuple[object, str]]:
        rejected = await asyncio.to_thread(self.catalog.upsert, items)
        if time.monotonic() - self._saved_at >= self.save_every_s:
            await self.close()
        return rejected

    async def close(self) -> None:
        await asyncio.to_thread(self.catalog.save, self.directory)
        self._saved_at = time.monotonic()


def build_search_service(catalog: CatalogIndexer, features: FeatureSource | None = None,
                         reranker: Reranker | None = None, taxonomy: Path = TAXONOMY,
                         fusion: Fusion | None = None, executor: Executor | None = None) -> SearchService:
    """A ``SearchService`` over ``catalog`` scored by ``fusion`` (default: the prior), with
    intent from the taxonomy when it exists, searching in ``executor``'s threads."""
    intents = None
    if Path(taxonomy).exists():
        part = INTENT_PART if INTENT_PART in catalog.encoder.name.split("+") else None
        intents = IntentClassifier(read_taxonomy(taxonomy), catalog.encoder, part=part)
    else:
        log.warning("no taxonomy at %s: queries get no intent category", taxonomy)
    catalog.encoder.encode_queries(["warm up"])  # loads the model now, not on the first request (~2 s)
    retriever = HybridRetriever(catalog, fusion)
    return SearchService(catalog, QueryUnderstanding(catalog, intents, retriever=retriever), features=features,
                         reranker=reranker, retriever=retriever, executor=executor)


def _upsert_with_progress(catalog: CatalogIndexer, items: Iterable[object], batch: int = 512) -> tuple[int, int]:
    items = iter(items)
    loaded = rejected = 0
    with tqdm(desc="catalog items", unit="item") as progress:
        while chunk := list(islice(items, batch)):
            failures = catalog.upsert(chunk)
            for _, reason in failures:
                log.warning("rejected: %s", reason)
            rejected += len(failures)
            loaded += len(chunk) - len(failures)
            progress.update(len(chunk))
    return loaded, rejected


def load_items(data_dir: Path, items: Iterable[object], encoder_name: str | None = None,
               batch: int = 512, cache_dir: Path | None = None) -> tuple[int, int]:
    """Validate and index ``items`` into the catalog under ``data_dir`` (with ``served_encoder``
    unless told), with progress; (loaded, rejected)."""
    catalog = open_catalog(data_dir, encoder_name, cache_dir)
    loaded, rejected = _upsert_with_progress(catalog, items, batch)
    catalog.save(catalog_dir(data_dir))
    log.info("loaded %d items (%d rejected); the catalog holds %d", loaded, rejected, len(catalog))
    return loaded, rejected
