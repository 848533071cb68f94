"""Feature-serving latency over HTTP on loopback: one user + region vector per request.

The Trivago slice is replayed through a worker first, so the features are real.
Baselines in the same run: the same reads in-process straight from Redis (no
HTTP), and ``GET /healthz`` (the HTTP stack with no work).

    python -m bench.serving [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from bench.report import record, table
from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.core.stats import percentile, read_counters
from relevo.features.online import OnlineStore
from relevo.runtime.processes import Runtime, first_key
from relevo.streams.datasets import open_dataset
from relevo.streams.producer import EventProducer

log = logging.getLogger("bench.serving")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    events = list(open_dataset("trivago"))
    users = [u for u, _ in Counter(e["user_id"] for e in events).most_common(200)]
    regions = [r for r, _ in Counter(e["region"] for e in events).most_common(20)]
    tmp = Path(tempfile.mkdtemp(prefix="relevo-serving-"))
    with Runtime(Settings(data_dir=tmp, api_port=0, rate_limit_per_s=0), workers=1) as rt:  # latency, not the limiter
        read_key = {"X-API-Key": first_key(rt.settings, "read")}
        rt.wait_workers_ready()

        async def load() -> None:
            async with EventProducer(rt.settings.kafka_bootstrap_servers) as producer:
                await producer.send(events)
        asyncio.run(load())
        while asyncio.run(applied(rt.settings.redis_url)) < len(events) - 10:
            time.sleep(0.5)
        # The API loads its search catalog in the background: measure once that work is done, not beside it.
        with httpx.Client(base_url=rt.api_url, headers=read_key) as http:
            deadline = time.monotonic() + 180
            while http.get("/v1/search", params={"q": "x"}).status_code == 503 and time.monotonic() < deadline:
                time.sleep(1)
        time.sleep(5)  # the worker's last commits and the API's event follower settle
        log.info("features loaded, API idle; measuring")

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

        with httpx.Client(base_url=rt.api_url, headers=read_key) as http:
            def health(i: int) -> None:
                http.get("/healthz").raise_for_status()

            def vector(i: int) -> None:
                http.post("/v1/features/batch", json={"users": [users[i % len(users)]],
                                                      "regions": [regions[i % len(regions)]]}).raise_for_status()

            def user_only(i: int) -> None:
                http.get(f"/v1/features/users/{users[i % len(users)]}").raise_for_status()
            timed(vector, 200)
            floor = timed(health, args.requests)
            over_http = timed(vector, args.requests)
            single = timed(user_only, args.requests)

    rows = [[name, len(xs), percentile(xs, 0.5), percentile(xs, 0.99)] for name, xs in [
        ("GET /healthz over HTTP (baseline: HTTP floor)", floor),
        ("user + region read in-process from Redis (baseline)", direct),
        ("POST /v1/features/batch, one user + one region", over_http),
        ("GET /v1/features/users/{id}", single),
    ]]
    record("Feature serving latency over HTTP (loopback)", None, table(["request", "n", "p50 ms", "p99 ms"], rows),
           notes="Features from the full Trivago replay; the 200 busiest users and 20 busiest regions in turn; "
                 "one sequential keep-alive client; API = uvicorn, one process. Target p99 ≤ 2 ms.")
    print(f"RESULT serving p99_ms={percentile(over_http, 0.99):.2f} healthz_p99_ms={percentile(floor, 0.99):.2f}")


if __name__ == "__main__":
    main()
