"""The same stream gives the same state however it is read: one worker, topics read at other paces,
two workers, two workers with one SIGKILLed mid-stream and restarted, one worker on Redis Cluster.

Real broker, real Redis (and a real three-master cluster), real worker processes, the Trivago slice's
events of three countries (32,637 events) with a click-through drop planted in one of them. Compared:
every feature (decayed to one time), every drift alert (region, metric, direction, when), every
labelled example (items, labels and feature rows).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from relevo.core.keys import Keys
from relevo.core.redis import connect, connect_sync
from relevo.core.settings import Settings
from relevo.drift.inject import drop_clicks
from relevo.drift.sinks import AlertStore
from relevo.runtime.processes import Runtime
from relevo.streams.datasets import trivago
from relevo.streams.topics import TRAIN_BATCHES
from tests.streamkit import assert_close, assert_same_features, counters, decayed_as_of, eventually, send

pytestmark = pytest.mark.slow
REGIONS = ("BR", "US", "DE")  # the three busiest countries: enough searches past the detectors' warm-up
DRIFT_REGION = "BR"


@pytest.fixture(scope="module")
def stream(shared_data: Path) -> list[dict[str, Any]]:
    events = [e for e in trivago.events(shared_data / "trivago" / "trivago_val_100k.parquet")
              if e["region"] in REGIONS]
    assert len(events) >= 30_000
    own = [e["ts"] for e in events if e["region"] == DRIFT_REGION]
    return list(drop_clicks(events, DRIFT_REGION, own[int(len(own) * 0.5)], fraction=0.5))


def _settings(tmp: Path, kafka: str, redis_url: str, name: str) -> Settings:
    return Settings(kafka_bootstrap_servers=kafka, redis_url=redis_url, data_dir=tmp / name, app_id=name,
                    key_prefix=name, topic_prefix=f"{name}.", partitions=2, session_timeout_s=6.0, idle_s=1.0,
                    checkpoint_s=1.0, examples_batch_age_s=0.2)


async def _consume_all(settings: Settings, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        values: list[bytes] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values += [r.value for r in records]
        return values
    finally:
        await consumer.stop()


def _examples(settings: Settings) -> dict[str, tuple[Any, ...]]:
    records = asyncio.run(_consume_all(settings, settings.topic(TRAIN_BATCHES)))
    return {e["search_id"]: (e["items"], e["labels"], e["features"]) for r in records for e in orjson.loads(r)}


def _alerts(settings: Settings) -> set[tuple[str, str, bool, int]]:
    async def read() -> list[Any]:
        redis = connect(settings.redis_url)
        try:
            return await AlertStore(redis, Keys(settings.key_prefix)).query(limit=10_000)
        finally:
            await redis.aclose()
    window = 3_600_000  # an hour of event time: far less than the detectors' windows
    return {(a.region, a.metric, a.statistic > 0, a.first_seen // window) for a in asyncio.run(read())}


def run(tmp: Path, kafka: str, redis_url: str, name: str, events: list[dict[str, Any]], workers: int = 1,
        packing: tuple[int, int] = (200, 200), kill: bool = False) -> dict[str, Any]:
    """Produce the whole stream (searches and clicks packed ``packing`` events per record), then run
    ``workers`` workers over it (``kill``: SIGKILL one mid-stream and start another); what it left."""
    settings = _settings(tmp, kafka, redis_url, name)
    expected_examples = {e["search_id"] for e in events if e["type"] == "search" and len(e.get("results", ())) > 1}
    with Runtime(settings, workers=0, api=False) as rt:
        send(rt.settings, [e for e in events if e["type"] == "search"], per_record=packing[0])
        send(rt.settings, [e for e in events if e["type"] != "search"], per_record=packing[1])
        for _ in range(workers):
            rt.start_worker()
        client = connect_sync(redis_url)
        if kill:
            deadline = time.monotonic() + 120
            while counters(client, name).get("events_applied", 0) < len(events) // 3:
                assert time.monotonic() < deadline, "the workers never got a third of the way"
                time.sleep(0.05)
            os.kill(rt.workers[0].pid, signal.SIGKILL)
            rt.workers[0].wait()
            rt.start_worker()
        eventually(lambda: _assert_covers(_examples(settings), expected_examples), timeout=300)
        rt.wait_drained(timeout=120)
        as_of = max(e["ts"] for e in events)
        return {"features": decayed_as_of(client, name, as_of), "alerts": _alerts(settings),
                "examples": _examples(settings)}


def _assert_covers(found: dict[str, Any], expected: set[str]) -> None:
    assert set(found) == expected, f"{len(expected - set(found))} searches not yet turned into examples"


def _assert_same(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert got["alerts"] == want["alerts"], what
    assert got["examples"].keys() == want["examples"].keys(), what
    for search_id, (items, labels, rows) in want["examples"].items():
        other = got["examples"][search_id]
        assert (other[0], other[1]) == (items, labels), (what, search_id)
        assert_close([value for row in other[2] for value in row], [value for row in rows for value in row],
                     (what, search_id))
    assert_same_features(got["features"], want["features"], what)


@pytest.fixture(scope="module")
def reference(stream, tmp_path_factory, kafka_bootstrap, redis_url) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("eq"), kafka_bootstrap, redis_url, "eq-one", stream)


def test_one_worker_finds_the_planted_drift_and_labels_every_search(reference) -> None:
    assert any(region == DRIFT_REGION and metric == "ctr" and not up
               for region, metric, up, _ in reference["alerts"]), reference["alerts"]
    assert sum(1 for _, labels, _ in reference["examples"].values() if max(labels) > 0) > 1000


@pytest.mark.parametrize("name, options", [
    ("eq-paced", {"packing": (1, 200)}),  # searches one per record, clicks 200: the click topic races ahead
    ("eq-two", {"workers": 2}),
    ("eq-killed", {"workers": 2, "kill": True, "packing": (50, 50)}),
])
def test_the_same_stream_gives_the_same_state(reference, stream, name, options, tmp_path_factory,
                                              kafka_bootstrap, redis_url) -> None:
    got = run(tmp_path_factory.mktemp("eq"), kafka_bootstrap, redis_url, name, stream, **options)
    _assert_same(got, reference, name)


def test_redis_cluster_gives_the_same_state(reference, stream, tmp_path_factory, kafka_bootstrap,
                                            redis_cluster_url) -> None:
    got = run(tmp_path_factory.mktemp("eq"), kafka_bootstrap, redis_cluster_url, "eq-cluster", stream)
    _assert_same(got, reference, "cluster")
