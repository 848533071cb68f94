"""The worker end to end: real broker, real Redis, worker processes started as a user would."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import orjson
import psutil
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from relevo.core.keys import Keys
from relevo.features.definitions import USER_ITEMS, USER_WEIGHTS
from relevo.features.online import OnlineStore
from relevo.features.writer import FeatureWriter
from tests.streamkit import (
    assert_same_features,
    counters,
    decayed_as_of,
    eventually,
    expected_decayed,
    running,
    send,
    synthetic_events,
    wait_applied,
)
from tests.test_learning import planted_stream

pytestmark = pytest.mark.slow


def test_features_from_kafka_match_a_plain_recomputation(tmp_path, kafka_bootstrap, redis_url) -> None:
    events = synthetic_events(600, seed=11)
    as_of = max(e["ts"] for e in events)
    want = expected_decayed(events, as_of, "user_id", USER_WEIGHTS, USER_ITEMS.half_life_s)

    async def read() -> dict:
        r = aioredis.Redis.from_url(redis_url)
        store = OnlineStore(r, Keys("m"))
        users = {u: await store.user(u) for u in {e["user_id"] for e in events}}
        await r.aclose()
        return users

    def all_applied() -> None:
        # the stream clock reaches the last event once every source has gone idle after it
        for user, features in asyncio.run(read()).items():
            assert features is not None and features["as_of"] == as_of, user
            expected = {i: v for (u, i), v in want.items() if u == user}
            assert features["items"] == pytest.approx(expected, rel=1e-9)
            touched = [e for e in events if e["user_id"] == user and e["type"] == "click"]
            latest = sorted({e["item_id"]: e["ts"] for e in touched}.items(), key=lambda kv: -kv[1])
            assert features["recent_items"] == [i for i, _ in latest][:20]

    with running(tmp_path, kafka_bootstrap, redis_url, "t-match", "m") as rt:
        rt.wait_workers_ready()
        send(rt.settings, events)
        wait_applied(rt.redis(), "m", len(events))
        eventually(all_applied)


def test_sigkill_mid_replay_leaves_every_feature_applied_once(tmp_path, kafka_bootstrap, redis_url) -> None:
    events = synthetic_events(3000, seed=5, users=40)
    client = redis.Redis.from_url(redis_url)

    async def reference() -> None:
        import redis.asyncio as aioredis
        r = aioredis.Redis.from_url(redis_url)
        await FeatureWriter(r, Keys("ref")).process(events)
        await r.aclose()
    asyncio.run(reference())

    with running(tmp_path, kafka_bootstrap, redis_url, "t-kill", "k") as rt:
        rt.wait_workers_ready()
        settings = rt.settings
        # One event per record, so the worker is mid-stream when it dies.
        send(settings, events, per_record=1)
        deadline = time.monotonic() + 60
        while counters(client, "k").get("events_applied", 0) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(rt.workers[0].pid, signal.SIGKILL)
        rt.workers[0].wait()
        applied_at_kill = counters(client, "k").get("events_applied", 0)
        assert 0 < applied_at_kill < len(events), "the kill must land mid-replay"
        restarted = time.time() * 1000
        rt.start_worker()
        rt.wait_workers_ready(since_ms=int(restarted), timeout=90)
        wait_applied(client, "k", len(events), timeout=120)
        as_of = max(e["ts"] for e in events)
        want = decayed_as_of(client, "ref", as_of)

        def same_features() -> None:
            assert_same_features(decayed_as_of(client, "k", as_of), want)
        eventually(same_features)
    assert counters(client, "k")["events_applied"] == len(events)


def test_malformed_records_go_to_the_dlq_and_the_worker_keeps_going(tmp_path, kafka_bootstrap,
                                                                   redis_url) -> None:
    good = synthetic_events(500, seed=2, prefix="g")
    bad: list[bytes] = []
    for i in range(1000):
        kind = i % 5
        if kind == 0:
            bad.append(b"{broken json %d" % i)
        elif kind == 1:
            bad.append(orjson.dumps({**good[i % 500], "event_id": None}))
        elif kind == 2:
            bad.append(orjson.dumps({**good[i % 500], "event_id": f"b{i}", "ts": "soon"}))
        elif kind == 3:
            bad.append(orjson.dumps({**good[i % 500], "event_id": f"b{i}", "user_id": "u" * 500}))
        else:
            bad.append(orjson.dumps([1, 2, 3]))
    with running(tmp_path, kafka_bootstrap, redis_url, "t-dlq", "d") as rt:
        rt.wait_workers_ready()
        settings = rt.settings

        async def produce() -> None:
            from relevo.streams.producer import EventProducer
            async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                                     partitions=2) as producer:
                for i, raw in enumerate(bad):
                    await producer.send_raw(f"{settings.topic_prefix}events.click", raw, b"k%d" % i)
                    if i % 2 == 0:
                        await producer.send([good[i // 2]])
        asyncio.run(produce())
        client = rt.redis()
        wait_applied(client, "d", len(good))
        dead = asyncio.run(_read_dlq(settings.kafka_bootstrap_servers, f"{settings.topic_prefix}events.dlq",
                                     expected=1000 + 2 * 200))
        assert rt.workers[0].poll() is None, "the worker must survive bad input"
    reasons = {h["reason"] for _, h in dead}
    assert any(r.startswith("malformed JSON") for r in reasons)
    assert any(r.startswith("ts:") for r in reasons) and any(r.startswith("user_id:") for r in reasons)
    originals = {v for v, _ in dead}
    assert all(raw in originals for raw in bad if not raw.startswith(b"[1"))
    assert counters(client, "d")["events_applied"] == len(good)


async def _read_dlq(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, dict[str, str]]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[bytes, dict[str, str]]] = []
    try:
        deadline = time.monotonic() + 30
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out += [(r.value, {k: v.decode() for k, v in r.headers}) for r in records]
    finally:
        await consumer.stop()
    return out


@pytest.mark.parametrize("stage_process", [False, True], ids=["stages-beside-the-agent", "stage-process"])
def test_sigkill_mid_stream_loses_no_labelled_example(tmp_path, kafka_bootstrap, redis_url, stage_process) -> None:
    searches = 1500
    events = planted_stream(searches)
    with running(tmp_path, kafka_bootstrap, redis_url, f"t-ex-{stage_process}", f"x{stage_process:d}",
                 processors="examples", examples_wait_s=0.0, examples_batch_age_s=0.5,
                 stage_process=stage_process) as rt:
        rt.wait_workers_ready()
        settings, client = rt.settings, rt.redis()
        send(settings, events, per_record=1)  # one event per record, so the worker is mid-stream when it dies
        deadline = time.monotonic() + 60
        while consumed(client, f"x{stage_process:d}:stats") < 600 and time.monotonic() < deadline:
            time.sleep(0.02)
        children = psutil.Process(rt.workers[0].pid).children()
        assert len(children) >= stage_process  # the stage process (and spawn's resource tracker)
        os.kill(rt.workers[0].pid, signal.SIGKILL)
        rt.workers[0].wait()
        _, left = psutil.wait_procs(children, timeout=30)
        assert not left, "a SIGKILLed worker's stage process must stop with it"
        assert consumed(client, f"x{stage_process:d}:stats") < len(events), "the kill must land mid-stream"
        restarted = time.time() * 1000
        rt.start_worker()
        rt.wait_workers_ready(since_ms=int(restarted), timeout=90)
        # Later events move every partition's watermark past the stream (quiet ones go idle after 5 s).
        late = planted_stream(20, seed=1, t0=events[-1]["ts"] + 3_600_000, prefix="late")
        send(settings, late[:20])
        time.sleep(6)
        send(settings, late[20:])
        labelled = asyncio.run(read_examples(settings, {e["search_id"] for e in events if e["type"] == "search"}))
    clicked = {e["search_id"]: e["item_id"] for e in events if e["type"] == "click"}
    assert len(labelled) == searches, f"{searches - len(labelled)} searches never became examples"
    for search_id, example in labelled.items():
        assert example["labels"][example["items"].index(clicked[search_id])] == 2, search_id


def consumed(client: redis.Redis, stats_key: str) -> int:
    return sum(int(v) for k, v in client.hgetall(stats_key).items() if k.startswith(b"events:"))


async def read_examples(settings, wanted: set[str], timeout_s: float = 90.0) -> dict[str, dict]:
    """Examples on train.batches by search id (the first of any re-sent copies), until all ``wanted`` are in."""
    consumer = AIOKafkaConsumer(settings.topic("train.batches"), bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest")
    found: dict[str, dict] = {}
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not wanted <= found.keys() and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    for example in orjson.loads(record.value):
                        found.setdefault(example["search_id"], example)
    finally:
        await consumer.stop()
    return {k: v for k, v in found.items() if k in wanted}
