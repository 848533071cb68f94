"""Serving latency over HTTP on loopback: feature reads alone, then beside searches and ingest.

The Trivago slice is replayed through a worker first, so the features are real, and
the Amazon multilingual products are the search catalog. Baselines in the same run:
the same reads in-process straight from Redis (no HTTP), and ``GET /healthz`` (the
HTTP stack with no work). Then a mixed phase: concurrent searchers (real title
words as queries), feature readers, an ingester posting small event batches and a
``/healthz`` prober share the one API process, and each route's p99 under the mix
stands beside its p99 in the same mix without the searchers and its sequential p99.

    python -m bench.serving [--requests 3000] [--mixed-searches 200] [--cpu-threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psutil
import redis
import redis.asyncio as aioredis

from bench.report import record, table
from bench.search_latency import queries
from bench.throughput import cpu_seconds, redis_cpu
from relevo.core.keys import Keys
from relevo.core.settings import SHARED_DATA, Settings
from relevo.core.stats import percentile, read_counters
from relevo.features.online import OnlineStore
from relevo.runtime.processes import Runtime, first_key
from relevo.search.catalog import load_amazon
from relevo.search.catalog_store import load_items
from relevo.streams.datasets import open_dataset
from relevo.streams.producer import EventProducer

log = logging.getLogger("bench.serving")
AMAZON = SHARED_DATA / "amazon_multilingual" / "product_titles_by_market.tsv"
INGEST_BATCH = 10  # events per POST /v1/events: a shop's small batches


def timed(call, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def timed_async(call, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def applied(redis_url: str) -> float:
    """Events the workers applied or skipped as duplicates (the feature shards' counters summed)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        counters = await read_counters(client, Keys())
    finally:
        await client.aclose()
    return counters.get("events_applied", 0) + counters.get("events_duplicate", 0)


def load_catalog(data_dir: Path) -> list[dict]:
    """Index the Amazon products into ``data_dir``'s catalog (embeddings cached where the API
    caches them, ``RELEVO_CACHE_DIR``); the products."""
    items = load_amazon(AMAZON)
    load_items(data_dir, items)
    return items


class Requests:
    """The requests each route is timed with, the i-th of each in turn."""

    def __init__(self, users: list[str], regions: list[str], searches: list[tuple[str, str, str]],
                 events: list[dict]) -> None:
        self.users, self.regions, self.searches, self.events = users, regions, searches, events
        self.typed = [e for e in events[::7] if e.get("query")]  # the events whose queries suggest() types
        self._batches = itertools.count()

    def suggest(self, i: int) -> dict:
        """The first 1-5 letters of a real query, typed by a busy user in the query's region."""
        e = self.typed[i * 7919 % len(self.typed)]
        return {"prefix": e["query"][:1 + i % 5], "user_id": self.users[i % len(self.users)], "region": e["region"]}

    def features(self, i: int) -> dict:
        return {"users": [self.users[i % len(self.users)]], "regions": [self.regions[i % len(self.regions)]]}

    def search(self, i: int) -> dict:
        query, region, locale = self.searches[i % len(self.searches)]
        return {"q": query, "region": region, "locale": locale, "user_id": self.users[i % len(self.users)]}

    def ingest(self) -> list[dict]:
        """The next small batch of real events under fresh ids (so the worker applies them)."""
        n = next(self._batches)
        start = n * INGEST_BATCH % len(self.events)
        return [{**e, "event_id": f"mixed-{n}-{e['event_id']}"} for e in self.events[start:start + INGEST_BATCH]]


Route = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def routes(requests: Requests) -> dict[str, Route]:
    return {
        "GET /healthz": lambda http, i: http.get("/healthz"),
        "POST /v1/features/batch": lambda http, i: http.post("/v1/features/batch", json=requests.features(i)),
        "GET /v1/search": lambda http, i: http.get("/v1/search", params=requests.search(i)),
        "POST /v1/events": lambda http, i: http.post("/v1/events", json=requests.ingest()),
    }


async def mixed(api_url: str, headers: dict[str, dict[str, str]], clients: dict[str, int], route_of: dict[str, Route],
                until: str, count: int) -> dict[str, list[float]]:
    """Every route's latencies while ``clients[route]`` clients call it concurrently, each on its own
    keep-alive connection; it ends when each client of ``until`` has sent ``count`` requests."""
    done = asyncio.Event()
    out: dict[str, list[float]] = {route: [] for route in clients}

    async def client(route: str, n: int) -> None:
        async with httpx.AsyncClient(base_url=api_url, headers=headers[route], timeout=60) as http:
            for i in itertools.count():
                if done.is_set() or (route == until and i >= count):
                    return
                start = time.perf_counter()
                (await route_of[route](http, i * clients[route] + n)).raise_for_status()  # clients take turns
                out[route].append((time.perf_counter() - start) * 1000)

    leads = [asyncio.create_task(client(until, n)) for n in range(clients[until])]
    others = [asyncio.create_task(client(route, n)) for route, k in clients.items() if route != until
              for n in range(k)]
    await asyncio.gather(*leads)
    done.set()
    await asyncio.gather(*others)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per route (searches and "
                                                                  "ingest batches: a tenth of it)")
    parser.add_argument("--mixed-searches", type=int, default=200, help="searches per searcher in the mixed phase")
    parser.add_argument("--searchers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--cpu-threads", type=int, default=Settings.from_env().api_cpu_threads,
                        help="the API's search threads (RELEVO_API_CPU_THREADS)")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    events = list(open_dataset("trivago"))
    users = [u for u, _ in Counter(e["user_id"] for e in events).most_common(200)]
    regions = [r for r, _ in Counter(e["region"] for e in events).most_common(20)]
    tmp = Path(tempfile.mkdtemp(prefix="relevo-serving-"))
    requests = Requests(users, regions, queries(load_catalog(tmp), 300), events)
    settings = Settings(data_dir=tmp, api_port=0, rate_limit_per_s=0, api_cpu_threads=args.cpu_threads)
    with Runtime(settings, workers=1) as rt:  # rate_limit_per_s=0: latency, not the limiter
        read_key = {"X-API-Key": first_key(rt.settings, "read")}
        ingest_key = {"X-API-Key": first_key(rt.settings, "ingest")}
        rt.wait_workers_ready()

        async def load() -> None:
            async with EventProducer(rt.settings.kafka_bootstrap_servers) as producer:
                await producer.send(events)
        asyncio.run(load())
        while asyncio.run(applied(rt.settings.redis_url)) < len(events) - 10:
            time.sleep(0.5)
        rt.wait_drained()  # the region stage too: a worker catching up would share the cores with the API
        # The API loads its search catalog in the background: measure once that work is done, not beside it.
        # (Its first search takes seconds on a busy machine: catalog statistics and category rows are built then.)
        with httpx.Client(base_url=rt.api_url, headers=read_key, timeout=60) as http:
            deadline = time.monotonic() + 300
            while http.get("/v1/search", params={"q": "x"}).status_code == 503:
                if time.monotonic() > deadline:
                    raise TimeoutError("the API did not load its search catalog in 300 s")
                time.sleep(1)
        time.sleep(5)  # the worker's last commits and the API's event follower settle
        log.info("features and catalog loaded, API idle; measuring")

        async def in_process() -> list[float]:
            r = aioredis.Redis.from_url(rt.settings.redis_url)
            store = OnlineStore(r, Keys())

            async def both(i: int) -> None:
                await asyncio.gather(store.user(users[i % len(users)]), store.region(regions[i % len(regions)]))
            await timed_async(both, 200)  # warm up
            out = await timed_async(both, args.requests)
            await r.aclose()
            return out
        direct = asyncio.run(in_process())

        with httpx.Client(base_url=rt.api_url, headers=read_key, timeout=60) as http:
            def health(i: int) -> None:
                http.get("/healthz").raise_for_status()

            def vector(i: int) -> None:
                http.post("/v1/features/batch", json=requests.features(i)).raise_for_status()

            def user_only(i: int) -> None:
                http.get(f"/v1/features/users/{users[i % len(users)]}").raise_for_status()

            def search(i: int) -> None:
                http.get("/v1/search", params=requests.search(i)).raise_for_status()

            def suggest(i: int) -> None:
                http.get("/v1/suggest", params=requests.suggest(i)).raise_for_status()

            def ingest(i: int) -> None:
                http.post("/v1/events", json=requests.ingest(), headers=ingest_key).raise_for_status()
            api, store = psutil.Process(rt.api.pid), redis.Redis.from_url(rt.settings.redis_url)
            cpu: dict[str, float] = {}  # the API's CPU µs per request, per route
            store_cpu: dict[str, float] = {}  # and the Redis server's

            def measured(name: str, call, n: int) -> list[float]:  # type: ignore[no-untyped-def]
                before, store_before = cpu_seconds(api), redis_cpu(store)
                out = timed(call, n)
                cpu[name] = (cpu_seconds(api) - before) / n * 1e6
                store_cpu[name] = (redis_cpu(store) - store_before) / n * 1e6
                return out
            timed(vector, 200)
            timed(search, 20)
            floor = measured("health", health, args.requests)
            over_http = measured("vector", vector, args.requests)
            single = measured("user", user_only, args.requests)
            suggested = measured("suggest", suggest, args.requests)
            searched = measured("search", search, args.requests // 10)
            ingested = measured("ingest", ingest, args.requests // 10)
        sequential = {"GET /healthz": floor, "POST /v1/features/batch": over_http, "GET /v1/search": searched,
                      "POST /v1/events": ingested}
        clients = {"GET /v1/search": args.searchers, "POST /v1/features/batch": args.readers, "POST /v1/events": 1,
                   "GET /healthz": 1}
        headers = {route: ingest_key if route == "POST /v1/events" else read_key for route in clients}
        quiet = {route: n for route, n in clients.items() if route != "GET /v1/search"}
        log.info("the mix without searches: %s", quiet)
        without_search = asyncio.run(mixed(rt.api_url, headers, quiet, routes(requests), "POST /v1/features/batch",
                                           2 * args.mixed_searches))
        log.info("the mix: %s", clients)
        under_mix = asyncio.run(mixed(rt.api_url, headers, clients, routes(requests), "GET /v1/search",
                                      args.mixed_searches))

    rows = [[name, len(xs), percentile(xs, 0.5), percentile(xs, 0.99), *((round(cpu[route]), round(store_cpu[route]))
                                                                         if route else ("–", "–"))]
            for name, route, xs in [
        ("GET /healthz over HTTP (baseline: HTTP floor)", "health", floor),
        ("user + region read in-process from Redis (baseline)", None, direct),
        ("POST /v1/features/batch, one user + one region", "vector", over_http),
        ("GET /v1/features/users/{id}", "user", single),
        ("GET /v1/suggest, a user's prefix in a region", "suggest", suggested),
        ("GET /v1/search, a user, region and locale, k=20", "search", searched),
        (f"POST /v1/events, {INGEST_BATCH} events", "ingest", ingested),
    ]]
    record("Feature serving latency over HTTP (loopback)", None,
           table(["request", "n", "p50 ms", "p99 ms", "API CPU µs/request", "Redis CPU µs/request"], rows),
           notes="Features from the full Trivago replay; the 200 busiest users and 20 busiest regions in turn; "
                 "searches: 2-4 first words of real Amazon titles in their market over the 16k Amazon products; "
                 "one sequential keep-alive client; API = uvicorn, one process, measured once the worker has "
                 "drained. API CPU: user + system time of the API process over each route's requests (psutil). "
                 "Suggest: the first 1-5 letters of real Trivago queries, personalised for a busy user. "
                 "Target: the batch's and suggest's p99 ≤ 1.5 × /healthz's.")
    mix_rows = [[route, clients[route], len(xs), percentile(xs, 0.5), percentile(xs, 0.99),
                 percentile(without_search[route], 0.99) if route in without_search else "–",
                 percentile(sequential[route], 0.99)]
                for route, xs in under_mix.items()]
    record("Serving latency under a mixed concurrent load (loopback)", None,
           table(["route", "clients", "n", "mixed p50 ms", "mixed p99 ms", "p99 ms, mix without searches",
                  "sequential p99 ms"], mix_rows),
           notes=f"All clients at once on one API process ({args.cpu_threads} search threads), each on its own "
                 f"keep-alive connection, until each searcher has sent {args.mixed_searches} searches; the same mix "
                 f"without the searchers until each reader has sent {2 * args.mixed_searches} reads, and the "
                 f"sequential p99, from the same run. Ingest batches of {INGEST_BATCH} real Trivago events under "
                 f"fresh ids, applied by the worker.")
    mix = {route: percentile(xs, 0.99) for route, xs in under_mix.items()}
    print(f"RESULT serving p99_ms={percentile(over_http, 0.99):.2f} healthz_p99_ms={percentile(floor, 0.99):.2f} "
          f"cpu_ratio_to_healthz={cpu['vector'] / cpu['health']:.2f} "
          f"suggest_p99_ms={percentile(suggested, 0.99):.2f} "
          f"suggest_cpu_ratio_to_healthz={cpu['suggest'] / cpu['health']:.2f} "
          f"search_p99_ms={percentile(searched, 0.99):.2f} mixed_feature_p99_ms={mix['POST /v1/features/batch']:.2f} "
          f"mixed_search_p99_ms={mix['GET /v1/search']:.2f} mixed_ingest_p99_ms={mix['POST /v1/events']:.2f} "
          f"mixed_healthz_p99_ms={mix['GET /healthz']:.2f} "
          f"quiet_mix_feature_p99_ms={percentile(without_search['POST /v1/features/batch'], 0.99):.2f}")


if __name__ == "__main__":
    main()
