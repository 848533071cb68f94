"""Regressions of the hostile-caller campaign (issue 12), each against the real broker and Redis:
scoped keys, rate limits, the Redis pool, 503s, bounded inputs, and ingest that produces
nothing when it answers 4xx."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi.testclient import TestClient

from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.core.stats import WorkerStats
from relevo.features.online import OnlineStore
from relevo.features.writer import FeatureWriter
from relevo.serving.app import create_app, open_redis
from relevo.streams.events import decode_record
from relevo.streams.producer import records
from relevo.suggestions.service import SuggestService
from tests.streamkit import T0

KEYS = {"ingest_keys": "ing", "read_keys": "rd", "search_keys": "pub", "admin_keys": "adm"}
INGEST, READ, SEARCH, ADMIN = ({"X-API-Key": k} for k in ("ing", "rd", "pub", "adm"))
PREFIX = "hard."


def click(i: int, **extra: object) -> dict:
    return {"type": "click", "event_id": f"h{i}", "ts": T0 + i, "user_id": "u1", "session_id": "s1",
            "region": "FR", "item_id": f"i{i}", **extra}


def search(i: int, filter_bytes: int) -> dict:
    """A valid search whose filters make it about ``filter_bytes`` large."""
    return {"type": "search", "event_id": f"hs{i}", "ts": T0 + i, "user_id": "u1", "session_id": "s1",
            "region": "FR", "search_id": f"q{i}", "query": "hotel", "filters": {"note": "f" * filter_bytes}}


def settings_for(kafka: str, redis_url: str, tmp, **extra: object) -> Settings:
    return Settings(kafka_bootstrap_servers=kafka, redis_url=redis_url, key_prefix="hard", topic_prefix=PREFIX,
                    data_dir=tmp, **{**KEYS, **extra})


@pytest.fixture(scope="module")
def api(kafka_bootstrap, redis_url, tmp_path_factory):
    settings = settings_for(kafka_bootstrap, redis_url, tmp_path_factory.mktemp("hard"), redis_pool_size=8,
                            max_batch_bytes=2 * 1024 * 1024)
    with TestClient(create_app(settings)) as client:
        yield client


def topic_ends(kafka: str) -> dict[str, int]:
    """Records on each of this module's topics so far."""
    async def ends() -> dict[str, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka)
        await consumer.start()
        try:
            await consumer.topics()
            names = [t for t in await consumer.topics() if t.startswith(PREFIX)]
            parts = [TopicPartition(t, p) for t in names for p in consumer.partitions_for_topic(t) or ()]
            offsets = await consumer.end_offsets(parts) if parts else {}
            return {t: sum(o for tp, o in offsets.items() if tp.topic == t) for t in names}
        finally:
            await consumer.stop()
    return asyncio.run(ends())


def test_each_scope_opens_only_its_endpoints(api) -> None:
    assert api.post("/v1/events", content=b"[]", headers=READ).status_code == 403
    assert api.post("/v1/events", content=orjson.dumps([click(0)]), headers=INGEST).status_code == 200
    assert api.get("/v1/features/users/u1").status_code == 401
    for key in (SEARCH, INGEST):
        assert api.get("/v1/features/users/u1", headers=key).status_code == 403
    assert api.get("/v1/features/users/u1", headers=READ).status_code in (200, 404)
    assert api.get("/v1/alerts", headers=SEARCH).status_code == 403
    assert api.get("/v1/models", headers=READ).status_code == 200
    assert api.post("/v1/models/1/promote", headers=READ).status_code == 403
    assert api.post("/v1/models/1/promote", headers=ADMIN).status_code == 404  # allowed, but no such version


def test_a_search_key_never_gets_anyone_s_data(api) -> None:
    anonymous = api.get("/v1/suggest", params={"prefix": "ho"}, headers=SEARCH)
    assert anonymous.status_code == 200
    personal = api.get("/v1/suggest", params={"prefix": "ho", "user_id": "u1"}, headers=SEARCH)
    assert personal.status_code == 403 and "read key" in personal.json()["detail"]
    for params in ({"q": "hotel", "user_id": "u1"}, {"q": "hotel", "session_id": "s1"}):
        assert api.get("/v1/search", params=params, headers=SEARCH).status_code == 403
    assert api.get("/v1/suggest", params={"prefix": "ho", "user_id": "u1"}, headers=READ).status_code == 200


@contextmanager
def configured(api, **changes: object) -> Iterator[None]:
    """The module's app with other settings for a while (the key ring follows the settings)."""
    original = api.app.state.settings
    api.app.state.settings = replace(original, **changes)
    try:
        yield
    finally:
        api.app.state.settings = original


def test_no_keys_are_accepted_unless_configured_or_dev(api) -> None:
    none = dict.fromkeys(KEYS, "")
    with configured(api, **none):
        refused = api.post("/v1/events", content=b"[]", headers={"X-API-Key": "dev-ingest-key"})
        assert refused.status_code == 403 and "RELEVO_INGEST_KEYS" in refused.json()["detail"]
    with configured(api, **none, dev=True):
        assert api.post("/v1/events", content=b"[]", headers={"X-API-Key": "dev-ingest-key"}).status_code == 200
        assert api.get("/v1/models", headers={"X-API-Key": "dev-ingest-key"}).status_code == 403
        assert api.get("/v1/models", headers=READ).status_code == 403  # configured keys win over dev keys


def test_each_key_is_rate_limited(api) -> None:
    with configured(api, rate_limit_per_s=0.5, rate_limit_burst=3):
        answers = [api.get("/v1/models", headers=READ) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert int(answers[-1].headers["Retry-After"]) >= 1
        assert api.get("/v1/models", headers=ADMIN).status_code == 200  # another key, its own bucket


def test_concurrent_reads_and_full_batches_wait_for_the_pool_instead_of_failing(api) -> None:
    # The pool has 8 connections: 200 concurrent reads and a 500-id batch must all be answered.
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(lambda i: api.get(f"/v1/features/users/c{i}", headers=READ).status_code,
                              range(200)))
    assert set(codes) == {404}
    batch = api.post("/v1/features/batch", headers=READ, json={"users": [f"b{i}" for i in range(500)],
                                                               "items": [f"i{i}" for i in range(500)]})
    assert batch.status_code == 200 and len(batch.json()["users"]) == 500
    assert api.post("/v1/features/batch", headers=READ, json={"users": ["x"] * 501}).status_code == 422


def test_ids_times_and_regions_are_bounded(api) -> None:
    assert api.get("/v1/features/users/" + "x" * 60_000, headers=READ).status_code == 422
    assert api.get("/v1/features/users/" + "x" * 129, headers=READ).status_code == 422
    assert api.post("/v1/features/batch", headers=READ, json={"users": ["x" * 129]}).status_code == 422
    assert api.get("/v1/features/regions/F:R", headers=READ).status_code == 422
    for as_of in (1, 10**30):
        assert api.get("/v1/features/regions/FR", params={"as_of": as_of}, headers=READ).status_code == 422


def test_as_of_before_the_stream_clock_is_a_422_not_an_overflow(api, redis_url) -> None:
    async def write() -> None:
        client = aioredis.Redis.from_url(redis_url)
        await FeatureWriter(client, Keys("hard")).process(
            [{"type": "search", "event_id": "clock1", "ts": T0, "user_id": "u9", "session_id": "s9",
              "region": "FR", "search_id": "q9", "query": "hotel", "results": ["i1"]}])
        await client.aclose()
    asyncio.run(write())
    early = api.get("/v1/features/regions/FR", params={"as_of": 946_684_800_000}, headers=READ)
    assert early.status_code == 422 and "stream clock" in early.json()["detail"]
    assert api.get("/v1/features/regions/FR", params={"as_of": T0 + 1000}, headers=READ).status_code == 200


def test_bodies_are_refused_while_they_stream(api) -> None:
    def chunks():
        for _ in range(64):
            yield b" " * 65_536  # 4 MiB in all, no Content-Length
    answer = api.post("/v1/events", content=chunks(), headers=INGEST)
    assert answer.status_code == 413
    declared = api.post("/v1/events", content=b"[]", headers={**INGEST, "Content-Length": str(10**9)})
    assert declared.status_code == 413


def test_what_the_api_accepts_the_worker_accepts(api, kafka_bootstrap) -> None:
    big = search(1, 200_000)  # over the per-event limit, beside small valid events
    answer = api.post("/v1/events", content=orjson.dumps([click(2), big, click(3)]), headers=INGEST).json()
    assert [r["accepted"] for r in answer["results"]] == [True, False, True]
    assert "bytes exceed the limit" in answer["results"][1]["reason"]
    from relevo.streams.events import validate
    accepted = [validate(search(2, 10)), validate(search(3, 10)), validate(search(4, 65_000))]
    for value, _ in records(accepted, 200, 900_000):  # the records the producer makes of them
        events, rejects = decode_record(value, "search")
        assert len(events) == len(orjson.loads(value)) and not rejects


@pytest.mark.parametrize("body, status", [
    (b'[{"type": "click", "filters": ' + b"[" * 300 + b"]" * 300 + b"}]", 422),  # deeper than orjson writes
    (orjson.dumps([click(5), search(6, 1_100_000)]), 413),  # over what a dead letter holds
])
def test_inputs_that_cannot_be_dead_lettered_produce_nothing(api, kafka_bootstrap, body, status) -> None:
    before = topic_ends(kafka_bootstrap)
    answer = api.post("/v1/events", content=body, headers=INGEST)
    assert answer.status_code == status and "nothing was accepted" in answer.json()["detail"]
    assert topic_ends(kafka_bootstrap) == before


def test_many_rejects_are_dead_lettered_in_one_go(api, kafka_bootstrap) -> None:
    from relevo.streams.dlq import dead_letters

    async def bad_ids() -> set[str]:
        found = set()
        async for letter in dead_letters(api.app.state.settings):
            if letter.value.startswith(b'{"type":"click","event_id":"bad'):
                found.add(orjson.loads(letter.value)["event_id"])
        return found
    body = orjson.dumps([{"type": "click", "event_id": f"bad{i}"} for i in range(5000)])
    answer = api.post("/v1/events", content=body, headers=INGEST)
    assert answer.status_code == 200 and answer.json()["rejected"] == 5000
    assert asyncio.run(bad_ids()) == {f"bad{i}" for i in range(5000)}


def test_hostile_reasons_never_become_metric_labels(api, redis_url) -> None:
    async def record() -> None:
        client = aioredis.Redis.from_url(redis_url)
        reasons = [f"type: expected one of search, click, purchase, got 'evil{i}'" for i in range(500)]
        reasons += [f"processing: features failed: {i}" for i in range(50)] + ["no prefix at all"]
        await WorkerStats(client, Keys("hard")).record([], {}, reasons, [])
        await client.aclose()
    asyncio.run(record())
    labels = {line.split('reason="')[1].split('"')[0] for line in api.get("/metrics").text.splitlines()
              if line.startswith("relevo_dlq_events_total{")}
    assert labels <= {"type", "processing", "other", "malformed JSON", "event"} and "type" in labels


def test_redis_down_means_503_and_readyz_never_hangs(api) -> None:
    frozen = socket.socket()  # accepts connections and never answers: a frozen Redis
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(64)
    state = api.app.state
    kept = state.redis, state.store, state.suggest
    try:
        for url in (f"redis://127.0.0.1:{frozen.getsockname()[1]}/0", "redis://127.0.0.1:1/0"):
            down = replace(state.settings, redis_url=url, redis_timeout_s=0.5, ready_timeout_s=0.5)
            state.redis = open_redis(down)
            state.store = OnlineStore(state.redis, Keys("hard"))
            state.suggest = SuggestService(state.redis, Keys("hard"), features=state.store)
            with configured(api, ready_timeout_s=0.5):
                for path in ("/v1/features/users/u1", "/v1/features/regions/FR", "/v1/features/items/i1"):
                    assert api.get(path, headers=READ).status_code == 503
                assert api.post("/v1/features/batch", headers=READ, json={"users": ["a"]}).status_code == 503
                assert api.get("/v1/suggest", params={"prefix": "ho"}, headers=SEARCH).status_code == 503
                started = time.monotonic()
                ready = api.get("/readyz")
                assert ready.status_code == 503 and time.monotonic() - started < 3
                assert ready.json()["checks"]["redis"] != "ok" and ready.json()["checks"]["broker"] == "ok"
    finally:
        state.redis, state.store, state.suggest = kept
        frozen.close()


def test_readyz_reports_each_dependency(api) -> None:
    deadline = time.monotonic() + 20
    while api.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    body = api.get("/readyz").json()
    assert body["ready"] is True
    assert {"redis", "broker", "follower regions", "follower model updates", "follower catalog"} <= set(body["checks"])
    assert "model" in body["info"] and "search" in body["info"]
