"""Model versions over HTTP, and the trainer worker on a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI
from fastapi.testclient import TestClient

from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.models.examples import ExamplesBuilder, RegionContexts
from relevo.models.live import LiveModel
from relevo.models.ranker import Ranker, RankerConfig
from relevo.models.registry import Registry
from relevo.models.trainer import Trainer
from relevo.models.trainer_worker import run_trainer
from relevo.serving import models as models_api
from relevo.streams.eventtime import Mark
from relevo.streams.follow import follow_updates
from relevo.streams.regions import RegionPartition, encode_record, follow_regions, sources
from relevo.streams.stages import Snapshots
from relevo.streams.topics import ensure_topics
from tests.test_learning import build_examples, planted_stream

SMALL = RankerConfig(item_buckets=256, user_buckets=16, region_buckets=8, hidden=8)
ADMIN = {"X-API-Key": "admin-secret"}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    registry = Registry(tmp_path)
    for parent in (None, 1):
        registry.publish(Ranker(SMALL), parent=parent, window=(0, 1), figures={"prequential_mrr": 0.5})
    app = FastAPI()
    app.state.settings = Settings(admin_keys="admin-secret")
    app.state.models = LiveModel(registry)
    app.state.models.refresh()
    app.include_router(models_api.router)
    return TestClient(app)


def test_models_are_listed_newest_first_with_their_figures(client: TestClient) -> None:
    body = client.get("/v1/models", headers=ADMIN).json()
    assert body["serving"] == 2 and [v["version"] for v in body["versions"]] == [2, 1]
    assert body["versions"][0]["parent"] == 1 and body["versions"][0]["figures"]["prequential_mrr"] == 0.5


def test_one_unreadable_metadata_file_does_not_break_the_listing(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "v000001.json").write_text("{truncated")
    body = client.get("/v1/models", headers=ADMIN)
    assert body.status_code == 200 and [v["version"] for v in body.json()["versions"]] == [2]


def test_rollback_and_promote_need_the_admin_key(client: TestClient) -> None:
    assert client.post("/v1/models/2/rollback").status_code == 401
    assert client.post("/v1/models/2/rollback", headers={"X-API-Key": "nope"}).status_code == 403
    body = client.post("/v1/models/2/rollback", headers=ADMIN).json()
    assert body["serving"] == 1 and body["registry_current"] == 1
    assert client.post("/v1/models/2/promote", headers=ADMIN).json()["serving"] == 2
    missing = client.post("/v1/models/9/promote", headers=ADMIN)
    assert missing.status_code == 404 and "9" in missing.json()["detail"]
    assert client.post("/v1/models/1/rollback", headers=ADMIN).status_code == 409  # v1 is not serving


async def test_trainer_worker_publishes_and_announces(kafka_bootstrap: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{tmp_path.name[-8:]}.",
                        session_timeout_s=6.0, partitions=1, app_id=f"trainer-{tmp_path.name[-8:]}")
    registry = Registry(tmp_path)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_trainer(settings, Trainer(registry, SMALL, device="cpu"), stop))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    updates = AIOKafkaConsumer(settings.topic("model.updates"), bootstrap_servers=kafka_bootstrap,
                               auto_offset_reset="earliest")
    await producer.start()
    try:
        batches = await build_examples(planted_stream(100))
        await asyncio.sleep(1)  # the worker creates the topics
        garbage = [b"not json", b'{"a": 1}', orjson.dumps([{"search_id": "q", "items": "nope"}])]
        for value in garbage:  # each is dead-lettered with a reason; the trainer goes on
            await producer.send_and_wait(settings.topic("train.batches"), value)
        for batch in batches:
            await producer.send_and_wait(settings.topic("train.batches"), orjson.dumps(batch))
        await updates.start()
        message = await asyncio.wait_for(updates.getone(), timeout=60)
        announced = orjson.loads(message.value)
        assert announced["version"] == registry.current() and announced["sha256"]
        assert "mrr" in announced["prequential"]
        from relevo.streams.dlq import dead_letters
        letters = [letter async for letter in dead_letters(settings)]
        assert [letter.source for letter in letters] == [settings.topic("train.batches")] * 3
        assert [letter.reason.split(":")[0] for letter in letters] == ["malformed JSON", "train.batches", "example"]
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=30)
        await producer.stop()
        await updates.stop()


async def test_serving_follows_the_region_stream_from_the_workers_snapshot_and_model_updates(
        kafka_bootstrap: str, redis_url: str, redis_db: object, tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"f{tmp_path.name[-8:]}.",
                        partitions=1, idle_s=1.0)
    await ensure_topics(settings)
    redis = aioredis.Redis.from_url(redis_url)
    snapshots = Snapshots(redis, Keys("t"), "regions")
    upstream = sources(settings)
    registry, stop = Registry(tmp_path), asyncio.Event()
    live = LiveModel(registry)
    click = {"type": "click", "event_id": "c1", "ts": 1_700_000_000_000, "user_id": "u", "session_id": "s",
             "region": "FR", "item_id": "a", "kind": "view"}

    def record(events: list[dict], at: int) -> bytes:
        stamped = [{**e, "_source": upstream[1], "_pos": (n + at, 0)} for n, e in enumerate(events)]
        return encode_record({s: Mark(click["ts"] + at, 0, at * 1000) for s in upstream}, stamped)

    # A worker applied the first record and snapshotted: the replica starts from its state.
    worker = RegionPartition(0, [ExamplesBuilder(lambda batch: asyncio.sleep(0))], upstream, idle_ms=1000)
    first = record([{**click, "event_id": "c0", "item_id": "old", "ts": click["ts"] - 1000}], at=0)
    worker.handle([first])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    topic = settings.topic("events.by_region")
    sent = await producer.send_and_wait(topic, first, partition=0)
    await snapshots.save(0, sent.offset, worker.dump())
    for message in (record([click], at=2), record([], at=5)):  # the click, then time passing
        await producer.send_and_wait(topic, message, partition=0)
    contexts = RegionContexts(settings.partitions, upstream, idle_ms=1000)
    followers = [asyncio.create_task(follow_regions(settings, snapshots, contexts.make_state, stop)),
                 asyncio.create_task(follow_updates(live.refresh, settings, stop))]
    try:
        await asyncio.sleep(1.5)  # the update follower is listening from the end of the topic now
        registry.publish(Ranker(SMALL), parent=None, window=(0, 1), figures={})
        await producer.send_and_wait(settings.topic("model.updates"), orjson.dumps({"version": 1}))
        for _ in range(100):
            if live.version == 1 and contexts.for_region("FR").session_items("s") == ["a", "old"]:
                break
            await asyncio.sleep(0.1)
        assert live.version == 1 and contexts.for_region("FR").session_items("s") == ["a", "old"]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*followers), timeout=10)
        await producer.stop()
        await redis.aclose()
