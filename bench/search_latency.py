"""Search latency, top 20 over a 100k-item catalog on CPU: in process and over HTTP
(uvicorn on loopback), with exact numpy search as the baseline beside faiss HNSW.

The catalog repeats the real amazon_multilingual products under distinct ids until it
holds --items items; queries are the first words of real titles from every market,
with a user and region context so the ranker does its full work. With ``--tuned`` it
also measures the search tuning published in the data dir (its fusion, and the LoRA
query tower when it has one) beside the same encoder with the prior fusion.

    python -m bench.search_latency [--items 100000] [--queries 300] [--encoder use+e5 --tuned]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

from bench.report import record, table
from relevo.core.settings import SHARED_DATA, Settings
from relevo.features.context import ContextState
from relevo.models.live import LiveModel
from relevo.models.ranker import Ranker, RankerConfig
from relevo.models.registry import Registry
from relevo.models.rerank import LearnedReranker
from relevo.search.catalog import load_amazon
from relevo.search.catalog_store import build_search_service, tuning_dir
from relevo.search.encoder import DEFAULT_ENCODER, load_encoder
from relevo.search.retrieval import CatalogIndexer
from relevo.serving.search import router

DATA = SHARED_DATA / "amazon_multilingual" / "product_titles_by_market.tsv"
CACHE = Path(".relevo/cache/embeddings")


def big_catalog(size: int) -> list[dict]:
    """``size`` items: the real products repeated, each copy under its own id."""
    products = load_amazon(DATA)
    return [{**products[n % len(products)], "item_id": f"{products[n % len(products)]['item_id']}#{n}"}
            for n in range(size)]


def queries(items: list[dict], count: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(query, region, locale): the first 2-4 words of random titles, searched in their market."""
    rng = random.Random(seed)
    out = []
    for item in rng.sample(items, count):
        locale, title = rng.choice(sorted(item["titles"].items()))
        out.append((" ".join(title.split()[:rng.randint(2, 4)]), locale.split("-")[1], locale))
    return out


def learned_reranker(session_items: list[str]) -> LearnedReranker:
    """A serving ranker version (freshly initialised: its cost is what matters here) and a session."""
    registry = Registry(tempfile.mkdtemp())
    registry.publish(Ranker(RankerConfig()), parent=None, window=(0, 1), figures={})
    live, state = LiveModel(registry), ContextState()
    live.refresh()
    for n, item in enumerate(session_items):
        state.observe({"type": "click", "ts": int(time.time() * 1000) - 1000 * n, "session_id": "u1", "user_id": "u1",
                       "region": "", "item_id": item, "kind": "view"})
    return LearnedReranker(live, state)


def percentiles(samples: list[float]) -> list[float]:
    return [float(np.percentile(samples, 50)), float(np.percentile(samples, 99)), float(np.mean(samples))]


def in_process(service, cases) -> list[float]:
    async def run() -> list[float]:
        times = []
        for query, region, locale in cases:
            started = time.perf_counter()
            await service.search(query, user_id="u1", region=region, locale=locale, k=20)
            times.append((time.perf_counter() - started) * 1000)
        return times
    return asyncio.run(run())


def over_http(service, cases, port: int = 8765) -> list[float]:
    app = FastAPI()
    app.include_router(router)
    app.state.search = service
    app.state.settings = Settings(read_keys="bench-read-key", rate_limit_per_s=0)  # latency, not the limiter
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "bench-read-key"}) as client:
        for query, region, locale in cases:
            started = time.perf_counter()
            response = client.get("/v1/search", params={"q": query, "user_id": "u1", "region": region,
                                                        "locale": locale, "k": 20})
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    server.should_exit = True
    thread.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--tuned", action="store_true", help="also measure the published search tuning")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    items = big_catalog(args.items)
    catalog = CatalogIndexer(load_encoder(args.encoder, cache_dir=CACHE), ann_threshold=args.items)
    started = time.perf_counter()
    for start in range(0, len(items), 5000):
        catalog.upsert(items[start:start + 5000])
    index_s = time.perf_counter() - started
    region_items = {item["item_id"]: float(n % 50) for n, item in enumerate(items[:5000])}
    region = {"items": region_items, "categories": {"Books": 3.0, "Music": 2.0, "Video DVD": 1.0}}
    user = {"items": {items[1]["item_id"]: 2.0}, "categories": {"Books": 1.0}, "session_items": [items[2]["item_id"]]}

    async def features(user_id, region_code):
        return user, region

    service = build_search_service(catalog, features=features)
    cases = queries(items, args.queries)
    warm = cases[:20]
    rows = []
    exact_top, ann_top = [], []
    for label, ann in (("exact numpy (baseline)", False), ("faiss HNSW", True)):
        catalog.vectors.ann_threshold = 1 if ann else args.items * 10
        started = time.perf_counter()
        in_process(service, warm)  # warms caches, and builds HNSW on the first ANN search
        warm_s = time.perf_counter() - started
        vectors = catalog.encoder.encode_queries([q for q, _, _ in cases[:50]])
        tops = [[k for k, _ in hits] for hits in catalog.vectors.search(vectors, 20)]
        (ann_top if ann else exact_top).extend(tops)
        rows.append([f"in process, {label}", *percentiles(in_process(service, cases)), round(warm_s, 1)])
    rows.append(["HTTP loopback (uvicorn + httpx), faiss HNSW", *percentiles(over_http(service, cases)), ""])
    service.reranker = learned_reranker(user["session_items"])
    rows.append([f"in process, faiss HNSW + learned model re-ranking the top {service.reranker.depth}",
                 *percentiles(in_process(service, cases)), ""])
    if args.tuned:
        from relevo.models.query_tuning import attach_published

        settings = Settings.from_env()
        fusion = attach_published(catalog, tuning_dir(settings.data_dir), settings.cache_dir)
        if fusion is None:
            raise SystemExit(f"no usable search tuning for encoder {args.encoder!r} in {tuning_dir(settings.data_dir)}")
        tuned = build_search_service(catalog, features=features, fusion=fusion)
        towers = ", ".join(f"{part} queries by {name}" for part, name in fusion.query_towers.items()) or "no tower"
        started = time.perf_counter()
        in_process(tuned, warm)
        warm_s = time.perf_counter() - started
        rows.append([f"in process, faiss HNSW, published fusion ({towers})", *percentiles(in_process(tuned, cases)),
                     round(warm_s, 1)])
        rows.append([f"HTTP loopback, faiss HNSW, published fusion ({towers})",
                     *percentiles(over_http(tuned, cases)), ""])
    overlap = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(ann_top, exact_top, strict=True)])
    notes = (f"{len(catalog):,} items ({len(catalog.lexical):,} titles), encoder `{args.encoder}`, "
             f"hybrid retrieval (100 dense + 100 BM25 candidates) + intent + first ranker with user and "
             f"region features, k=20, {len(cases)} queries sequentially. Indexing (embeddings cached, "
             f"BM25 built) took {index_s:.0f} s. HNSW recall of the exact dense top 20: {overlap:.3f}.")
    record("Search latency, top 20 of a 100k-item catalog", None,
           table(["path", "p50 ms", "p99 ms", "mean ms", "warm-up s"], rows), notes)
    exact, hnsw, http = rows[0][2], rows[1][2], rows[2][2]
    print(f"RESULT search_latency hnsw_p99_ms={hnsw:.2f} exact_p99_ms={exact:.2f} http_p99_ms={http:.2f} "
          f"hnsw_recall={overlap:.3f}")


if __name__ == "__main__":
    main()
