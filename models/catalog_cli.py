"""The catalog on disk under the data dir: opening it, keeping it fed from the
``catalog.items`` topic, the search service built on it, and the
``relevo catalog load FILE [--amazon]`` command.

Layout under ``settings.data_dir``: ``catalog/`` (items + vectors, see
``CatalogIndexer.save``) and ``cache/embeddings/`` (item embeddings per encoder).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from models.catalog import load_amazon, read_items
from models.encoder import DEFAULT_ENCODER, ENCODERS, load_encoder
from models.query import QueryUnderstanding
from models.rerank import LearnedReranker
from models.retrieval import CatalogIndexer
from models.search import FeatureSource, SearchService
from models.taxonomy import TAXONOMY, IntentClassifier, read_taxonomy

log = logging.getLogger(__name__)


def catalog_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "catalog"


def open_catalog(data_dir: Path, encoder_name: str = DEFAULT_ENCODER) -> CatalogIndexer:
    """The saved catalog (empty if none), with an encoder whose item side is cached on disk."""
    encoder = load_encoder(encoder_name, cache_dir=Path(data_dir) / "cache" / "embeddings")
    return CatalogIndexer.open(catalog_dir(data_dir), encoder)


class CatalogConsumer:
    """Consumer of ``catalog.items`` records: upserts each batch (idempotent: an item
    replaces its earlier version) and saves at most every ``save_every_s`` seconds.

    ``process`` returns the rejected items with their reasons, for the DLQ. It encodes
    new titles in the calling thread: run it where searches are not served concurrently
    from other threads.
    """

    name = "catalog"

    def __init__(self, catalog: CatalogIndexer, directory: Path, save_every_s: float = 30.0) -> None:
        self.catalog, self.directory, self.save_every_s = catalog, Path(directory), save_every_s
        self._saved_at = time.monotonic()

    async def process(self, items: Sequence[object]) -> list[tuple[object, str]]:
        rejected = self.catalog.upsert(items)
        if time.monotonic() - self._saved_at >= self.save_every_s:
            await self.close()
        return rejected

    async def close(self) -> None:
        self.catalog.save(self.directory)
        self._saved_at = time.monotonic()


def build_search_service(catalog: CatalogIndexer, features: FeatureSource | None = None,
                         reranker: LearnedReranker | None = None, taxonomy: Path = TAXONOMY) -> SearchService:
    """A ``SearchService`` over ``catalog``, with intent from the taxonomy when it exists."""
    intents = None
    if Path(taxonomy).exists():
        intents = IntentClassifier(read_taxonomy(taxonomy), catalog.encoder)
    else:
        log.warning("no taxonomy at %s: queries get no intent category", taxonomy)
    catalog.encoder.encode_queries(["warm up"])  # loads the model now, not on the first request (~2 s)
    return SearchService(catalog, QueryUnderstanding(catalog, intents), features=features, reranker=reranker)


def load_items(data_dir: Path, items: Iterable[object], encoder_name: str = DEFAULT_ENCODER,
               batch: int = 512) -> tuple[int, int]:
    """Validate and index ``items`` into the catalog under ``data_dir``, with progress; (loaded, rejected)."""
    catalog = open_catalog(data_dir, encoder_name)
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
    catalog.save(catalog_dir(data_dir))
    log.info("loaded %d items (%d rejected); the catalog holds %d", loaded, rejected, len(catalog))
    return loaded, rejected


def load_command(args: argparse.Namespace, settings) -> int:
    """Validate and index every item of ``args.file``; report rejected items with reasons."""
    path = Path(args.file)
    if not path.exists():
        log.error("no such file: %s", path)
        return 2
    items = load_amazon(path) if args.amazon else read_items(path)
    loaded, rejected = load_items(settings.data_dir, items, args.encoder, args.batch)
    return 0 if loaded or not rejected else 1


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``catalog load FILE [--amazon] [--encoder NAME] [--batch N]``."""
    catalog = subparsers.add_parser("catalog", help="manage the searchable catalog")
    commands = catalog.add_subparsers(dest="catalog_command", required=True)
    load = commands.add_parser("load", help="load items (JSON lines or a JSON array) into the search index")
    load.add_argument("file", help="items file, or product_titles_by_market.tsv with --amazon")
    load.add_argument("--amazon", action="store_true", help="FILE is amazon_multilingual product titles")
    load.add_argument("--encoder", default=DEFAULT_ENCODER, choices=ENCODERS, help="text encoder")
    load.add_argument("--batch", type=int, default=512, help="items encoded at once")
    load.set_defaults(func=load_command)
