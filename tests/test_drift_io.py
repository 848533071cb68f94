"""Drift state across a restart, the alert store and its API on a real Redis, the topic on a real broker,
and the webhook sink."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI

from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.drift.alerts import Alert
from relevo.drift.combined import GlobalDrift
from relevo.drift.sinks import AlertStore, ListSink, TopicSink, WebhookSink
from relevo.serving.alerts import router
from relevo.streams.stages import Snapshots
from tests.test_drift import DriftMonitor, run, searches


@pytest.fixture
async def aredis(redis_db: redis.Redis, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the flushed test database."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_restart_from_snapshots_keeps_history_and_open_alerts_without_announcing_them_again(
        aredis: aioredis.Redis) -> None:
    regions, combined = Snapshots(aredis, Keys("t"), "regions"), Snapshots(aredis, Keys("t"), "global")
    first_sink = ListSink()
    first = DriftMonitor([first_sink], ctr_timeout_ms=60_000)
    await run(first, searches([(3000, 0.4), (800, 0.15)]))
    assert {a.region for a in first_sink.alerts if a.metric == "ctr"} == {"FR", "*"}
    seen_before = first.regional.detection.state.regions["FR"]["ctr"].seen
    await regions.save(0, 41, first.feeder.partition.dump())
    await combined.save(0, 7, first.combined.dump())

    second_sink = ListSink()
    second = DriftMonitor([second_sink], ctr_timeout_ms=60_000)
    offset, dump = await regions.load(0)
    second.feeder = first.feeder.restarted([second.regional], dump)
    second.combined = GlobalDrift(1, None, [second_sink], dump=(await combined.load(0))[1])
    assert offset == 41
    await run(second, searches([(800, 0.15)], start=3800, seed=1))
    assert second.regional.detection.state.regions["FR"]["ctr"].seen > seen_before  # no new warm-up
    assert second_sink.alerts == []  # still the same drift: no repeat, no spurious alert
    assert {a.region for a in second.regional.detection.active() + second.combined.detection.active()
            if a.metric == "ctr"} == {"FR", "*"}

    cold = DriftMonitor([ListSink()], ctr_timeout_ms=60_000)  # no snapshot: it has to warm up again
    await run(cold, searches([(800, 0.15)], start=3800, seed=1))
    assert cold.regional.detection.state.regions["FR"]["ctr"].seen < seen_before


async def test_an_unreadable_snapshot_starts_the_partition_from_the_beginning(aredis: aioredis.Redis) -> None:
    snapshots = Snapshots(aredis, Keys("t"), "regions")
    await aredis.set(snapshots.key(3), b"not a pickle")
    assert await snapshots.load(3) is None


def alert(id: str, region: str, metric: str, first: int, last: int, resolved: bool) -> Alert:
    return Alert(id, region, metric, "ADWIN", -0.3, 0.5, 0.35, 200, "warning", first, last, resolved,
                 last if resolved else None)


@pytest.fixture
async def api(aredis: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    store = AlertStore(aredis, Keys("t"))
    await store.save([alert("a", "FR", "ctr", 1000, 5000, True), alert("b", "FR", "volume", 2000, 9000, False),
                      alert("c", "DE", "ctr", 7000, 8000, False), alert("d", "*", "ctr", 3000, 3500, True)])
    app = FastAPI()
    app.state.alerts = store
    app.state.settings = Settings(read_keys="reader")
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers={"X-API-Key": "reader"}) as client:
        yield client


@pytest.mark.parametrize(("query", "ids"), [
    ("", ["c", "d", "b", "a"]),  # newest first
    ("?region=FR", ["b", "a"]),
    ("?region=*", ["d"]),
    ("?metric=ctr", ["c", "d", "a"]),
    ("?active=true", ["c", "b"]),
    ("?since=6000", ["c", "b"]),  # still open after 6000
    ("?until=2500", ["b", "a"]),  # opened by 2500
    ("?since=3200&until=4000&metric=ctr", ["d", "a"]),
    ("?limit=1", ["c"]),
])
async def test_api_filters(api: httpx.AsyncClient, query: str, ids: list[str]) -> None:
    response = await api.get("/v1/alerts" + query)
    assert response.status_code == 200
    assert [a["id"] for a in response.json()["alerts"]] == ids


@pytest.mark.parametrize("query", ["?metric=nope", "?since=5&until=4", "?limit=0"])
async def test_api_rejects_bad_filters(api: httpx.AsyncClient, query: str) -> None:
    response = await api.get("/v1/alerts" + query)
    assert 400 <= response.status_code < 500 and response.json()["detail"]


async def test_alerts_reach_the_topic(kafka_bootstrap: str) -> None:
    topic = f"drift.alerts.{time.time_ns()}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await producer.start()
    try:
        monitor = DriftMonitor(sinks=[TopicSink(partial(producer.send_and_wait, topic))], ctr_timeout_ms=60_000)
        await run(monitor, searches([(3000, 0.4), (800, 0.1)]))
        await consumer.start()
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert orjson.loads(message.value)["metric"] == "ctr"
    finally:
        await producer.stop()
        await consumer.stop()


class Flaky(BaseHTTPRequestHandler):
    """Fails the first ``server.failures`` posts with 503, then accepts."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["content-length"]))
        server = self.server
        server.posts += 1  # type: ignore[attr-defined]
        time.sleep(server.delay_s)  # type: ignore[attr-defined]
        status = 503 if server.posts <= server.failures else 204  # type: ignore[attr-defined]
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    server.posts, server.failures, server.delay_s = 0, 0, 0.0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


async def test_webhook_retries_until_delivered(webhook: ThreadingHTTPServer) -> None:
    webhook.failures = 2  # type: ignore[attr-defined]
    sink = WebhookSink(url(webhook), retries=3, backoff_s=0.01)
    await sink.send(alert("a", "FR", "ctr", 1, 2, False))
    await sink.close()
    assert (webhook.posts, sink.delivered, sink.failed) == (3, 1, 0)  # type: ignore[attr-defined]


async def test_webhook_gives_up_without_blocking_the_stream(webhook: ThreadingHTTPServer) -> None:
    webhook.failures, webhook.delay_s = 1000, 0.3  # type: ignore[attr-defined]
    sink = WebhookSink(url(webhook), timeout_s=0.1, retries=1, backoff_s=0.01, queue_size=2)
    started = time.perf_counter()
    for i in range(5):  # two queued, the rest dropped: the caller never waits for the server
        await sink.send(alert(str(i), "FR", "ctr", 1, 2, False))
    assert time.perf_counter() - started < 0.05
    await asyncio.sleep(0.6)
    await sink.close(drain_s=1.0)
    assert sink.delivered == 0 and sink.failed == 5
