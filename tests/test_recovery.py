"""Recovery on the real servers: dead letters re-driven exactly once, features rebuilt from the
log, a Redis restart that keeps every acknowledged write, and ``relevo up``'s supervision."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from relevo.core.keys import Keys
from relevo.features.rebuild import FeaturesExist, clear_features, rebuild_features
from relevo.features.writer import FeatureWriter
from relevo.runtime.cli import main
from relevo.runtime.stack import redis_server
from relevo.streams.dlq import dead_letters, redrive
from relevo.streams.events import encode
from relevo.streams.producer import EventProducer
from relevo.streams.stages import Outputs, PartitionedStage, Snapshots
from relevo.streams.topics import DLQ
from tests.streamkit import (
    assert_same_features,
    counters,
    decayed_as_of,
    eventually,
    eventually_async,
    running,
    send,
    synthetic_events,
    wait_applied,
)

pytestmark = pytest.mark.slow


async def apply_once(redis_url: str, prefix: str, events: list[dict]) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await FeatureWriter(client, Keys(prefix)).process(events)
    await client.aclose()


def assert_prefixes_agree(client: redis.Redis, got: str, want: str, as_of: int) -> None:
    assert_same_features(decayed_as_of(client, got, as_of), decayed_as_of(client, want, as_of))


def test_redrive_applies_what_was_lost_and_nothing_twice(tmp_path, kafka_bootstrap, redis_url) -> None:
    events = synthetic_events(400, seed=3, users=8, prefix="rd")
    applied, lost = events[:300], events[300:]
    client = redis.Redis.from_url(redis_url)
    asyncio.run(apply_once(redis_url, "rd-ref", events))
    with running(tmp_path, kafka_bootstrap, redis_url, "t-redrive", "rd") as rt:
        rt.wait_workers_ready()
        settings = rt.settings
        send(settings, applied)
        wait_applied(client, "rd", len(applied))

        async def dead_letter_and_redrive() -> tuple[int, int]:
            # What a writer that failed on every batch left behind: some events it had applied
            # before failing, and the rest never applied. Both go back in; the DLQ is read as is.
            async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix) as producer:
                for event in [*applied[-50:], *lost]:
                    await producer.send_dead_letters(
                        settings.topic(DLQ), [(encode(event), "processing: features failed: NoScriptError()")],
                        producer.topic_for(event["type"]))
                await producer.send_dead_letters(settings.topic(DLQ), [(b"{broken", "malformed JSON: x")], "api")
            letters = [letter async for letter in dead_letters(settings)]
            first = await redrive(settings, letters)
            again = await redrive(settings, letters)  # a second re-drive of the same selection
            assert first.still_invalid and first.events_sent == again.events_sent == 150
            return first.events_sent, again.events_sent
        asyncio.run(dead_letter_and_redrive())
        wait_applied(client, "rd", len(applied) + 2 * 150)  # each event counted applied or duplicate
        # Ids are counted when claimed, just before their updates land: wait for the features.
        eventually(lambda: assert_prefixes_agree(client, "rd", "rd-ref", max(e["ts"] for e in events)))
    assert counters(client, "rd")["events_applied"] == len(events)


def test_features_rebuilt_from_the_log_match_the_worker(tmp_path, kafka_bootstrap, redis_url, monkeypatch,
                                                        capsys) -> None:
    events = synthetic_events(1500, seed=9, users=30, prefix="rb")
    client = redis.Redis.from_url(redis_url)
    asyncio.run(apply_once(redis_url, "rb-ref", events))
    with running(tmp_path, kafka_bootstrap, redis_url, "t-rebuild", "rb") as rt:
        rt.wait_workers_ready()
        send(rt.settings, events, per_record=50)
        settings = rt.settings
        as_of = max(e["ts"] for e in events)
        eventually(lambda: assert_prefixes_agree(client, "rb", "rb-ref", as_of))

    async def lose_everything() -> None:  # what a Redis without persistence loses on a restart
        r = aioredis.Redis.from_url(redis_url)
        assert await clear_features(r, Keys("rb")) > 0
        await r.aclose()
    asyncio.run(lose_everything())
    assert not decayed_as_of(client, "rb", as_of)
    for name, value in {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url,
                        "RELEVO_KEY_PREFIX": "rb", "RELEVO_TOPIC_PREFIX": settings.topic_prefix,
                        "RELEVO_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    assert main(["features", "rebuild"]) == 0  # the documented command
    assert_prefixes_agree(client, "rb", "rb-ref", as_of)

    async def refuse_to_double_count() -> None:
        r = aioredis.Redis.from_url(redis_url)
        with pytest.raises(FeaturesExist):
            await rebuild_features(settings, r)
        assert (await rebuild_features(settings, r, fresh=True)).events == len(events)
        await r.aclose()
    asyncio.run(refuse_to_double_count())
    assert_prefixes_agree(client, "rb", "rb-ref", as_of)
    assert main(["features", "rebuild"]) == 2  # features exist: refused, nothing applied twice

    assert main(["dlq", "list"]) == 0
    assert "dead letters on" in capsys.readouterr().out


def test_a_killed_redis_comes_back_with_every_acknowledged_write(tmp_path) -> None:
    events = synthetic_events(800, seed=4, users=10, prefix="dur")
    with redis_server(tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        asyncio.run(apply_once(url, "dur", events))
        client = redis.Redis.from_url(url)
        before = decayed_as_of(client, "dur", max(e["ts"] for e in events))
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        server.start()  # same port, same data directory
        deadline = time.monotonic() + 30
        while True:
            try:
                after = decayed_as_of(client, "dur", max(e["ts"] for e in events))
                break
            except redis.exceptions.BusyLoadingError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert after == before and after
        assert counters(client, "dur")["events_applied"] == len(events)
        client.close()


def test_supervision_restarts_a_crashed_worker(tmp_path, kafka_bootstrap, redis_url, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="relevo.runtime.processes")
    client = redis.Redis.from_url(redis_url)
    with running(tmp_path, kafka_bootstrap, redis_url, "t-super", "sv") as rt:
        rt.wait_workers_ready()
        stop = threading.Event()
        supervisor = threading.Thread(target=rt.supervise, args=(stop, 0.1), daemon=True)
        supervisor.start()
        try:
            dead = rt.workers[0]
            os.kill(dead.pid, signal.SIGKILL)
            dead.wait()
            deadline = time.monotonic() + 30
            while rt.workers[0] is dead and time.monotonic() < deadline:
                time.sleep(0.1)
            assert rt.workers[0] is not dead and rt.workers[0].poll() is None
            rt.wait_workers_ready(since_ms=int(time.time() * 1000) - 1000, timeout=90)
            events = synthetic_events(100, seed=2, prefix="sv")
            send(rt.settings, events)
            wait_applied(client, "sv", len(events))  # the restarted worker carries the stream
        finally:
            stop.set()
            supervisor.join()
    assert "worker-0 exited with code -9" in caplog.text and "worker-0 restarted" in caplog.text


def test_a_stage_that_has_applied_everything_saves_its_state_at_once(tmp_path, kafka_bootstrap, redis_url) -> None:
    """A region partition that settles (every source idle, every event applied) snapshots then,
    not at its next checkpoint: a restart replays nothing, and ``wait_drained`` returns."""
    events = synthetic_events(400, seed=9, users=6, prefix="st")
    client = redis.Redis.from_url(redis_url)
    with running(tmp_path, kafka_bootstrap, redis_url, "t-settle", "st", idle_s=1.0, checkpoint_s=3600.0,
                 processors="features,drift,examples") as rt:
        rt.wait_workers_ready()
        send(rt.settings, events)
        wait_applied(client, "st", len(events))
        rt.wait_drained(timeout=120)  # no checkpoint is due within the hour: only settling saves


class AlwaysSettled:
    """A partition state with nothing ever held back, as the global stage's is between buckets;
    a record ``progress`` changes nothing but its position, as the region stream's heartbeats."""

    def __init__(self) -> None:
        self.read, self.changes, self.flushes = 0, 0, 0

    def handle(self, values: list[bytes]) -> None:
        self.read += len(values)
        self.changes += sum(v != b"progress" for v in values)

    async def flush(self) -> None:
        self.flushes += 1

    def dump(self) -> int:
        return self.read

    def settled(self) -> bool:
        return True

    def revision(self) -> int:
        return self.changes

    def backlog(self) -> bool:
        return False


class CountedSnapshots(Snapshots):
    """Snapshots that remember every offset saved."""

    saved: list[int]

    async def save(self, partition: int, offset: int, state: object) -> tuple[int, float]:
        self.saved.append(offset)
        return await super().save(partition, offset, state)


@dataclass
class StageUnderTest:
    send: Callable[[bytes], Awaitable[None]]
    saved: Callable[[tuple[int, int]], Awaitable[None]]  # waits for the snapshot (offset, state)
    snapshots: CountedSnapshots
    stage: PartitionedStage


@contextlib.asynccontextmanager
async def always_settled_stage(kafka_bootstrap: str, redis_url: str, name: str) -> AsyncIterator[StageUnderTest]:
    """A one-partition stage of ``AlwaysSettled`` with no checkpoint due within the hour."""
    topic = f"{name}-{os.getpid()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    client = aioredis.Redis.from_url(redis_url)
    snapshots, outputs, stop = CountedSnapshots(client, Keys(name), "always"), Outputs(kafka_bootstrap), asyncio.Event()
    snapshots.saved = []
    stage = PartitionedStage("always", kafka_bootstrap, topic, f"{topic}-group", lambda _, dump: AlwaysSettled(),
                             snapshots, outputs, checkpoint_s=3600.0, session_timeout_s=6.0)
    running_stage = asyncio.create_task(stage.run(stop))

    async def send(value: bytes) -> None:
        await producer.send_and_wait(topic, value, partition=0)

    async def saved(snapshot: tuple[int, int]) -> None:
        deadline = time.monotonic() + 120
        while await snapshots.load(0) != snapshot:
            assert time.monotonic() < deadline and not running_stage.done(), f"no snapshot {snapshot}"
            await asyncio.sleep(0.05)
    try:
        yield StageUnderTest(send, saved, snapshots, stage)
    finally:
        stop.set()
        await running_stage
        await producer.stop()
        await outputs.stop()
        await client.aclose()


async def test_a_stage_that_never_settles_anew_saves_its_state_once_it_has_read_everything(
        kafka_bootstrap, redis_url) -> None:
    """Without a transition to settled, going idle after reading saves (no checkpoint is due within the hour)."""
    async with always_settled_stage(kafka_bootstrap, redis_url, "always-settled") as under_test:
        for burst in range(2):  # the first settles a partition new to the stage; the second finds it settled
            for n in range(15 * burst, 15 * burst + 15):
                await under_test.send(str(n).encode())
            await under_test.saved((15 * burst + 14, 15 * burst + 15))


async def test_an_idle_stage_does_not_save_again_for_records_that_change_only_its_position(
        kafka_bootstrap, redis_url) -> None:
    """Heartbeats while the stream is quiet move a partition's offset but not its state: no snapshot
    for them (a replay reads them again), the next change is saved as before."""
    async with always_settled_stage(kafka_bootstrap, redis_url, "quiet") as under_test:
        await under_test.send(b"change")
        await under_test.saved((0, 1))
        for _ in range(10):
            await under_test.send(b"progress")
        stage = under_test.stage
        await eventually_async(lambda: stage.offsets.get(0) == 10, "the stage reads the heartbeats")
        state = stage.states[0]
        flushes = state.flushes
        # two flushes later the stage has polled empty at least once since: it was idle with them read
        await eventually_async(lambda: state.flushes >= flushes + 2, "the stage polls idle")
        await under_test.send(b"change")
        await under_test.saved((11, 12))
    assert under_test.snapshots.saved == [0, 11]

def test_a_restarted_embedded_broker_starts_a_new_log_epoch(tmp_path, redis_url) -> None:
    """The in-memory broker comes back empty, its offsets from 0 again: the events sent to it
    afterwards are all applied (none taken for a replay of the log before), and the region
    stream reads the new log from its start, keeping its state."""
    events = synthetic_events(1200, seed=5, users=12, prefix="ep")
    before, after = events[:700], events[700:]
    client = redis.Redis.from_url(redis_url)
    asyncio.run(apply_once(redis_url, "ep-ref", events))
    with running(tmp_path, "", redis_url, "t-epoch", "ep", idle_s=1.0, checkpoint_s=1.0) as rt:
        rt.wait_workers_ready()
        assert rt.settings.log_epoch == 1
        send(rt.settings, before)
        wait_applied(client, "ep", len(before))
        rt.wait_drained(timeout=120)
        stop = threading.Event()
        supervisor = threading.Thread(target=rt.supervise, args=(stop, 0.1), daemon=True)
        supervisor.start()
        try:
            broker, worker, killed_ms = rt.stack.servers[0].proc, rt.workers[0], int(time.time() * 1000)
            os.kill(broker.pid, signal.SIGKILL)
            eventually(lambda: _assert(rt.workers[0] is not worker and rt.stack.servers[0].proc is not broker))
            rt.wait_workers_ready(since_ms=killed_ms, timeout=90)
            assert rt.settings.log_epoch == 2 and client.get("ep:log_epoch") == b"2"
            send(rt.settings, after)
            wait_applied(client, "ep", len(events))
            eventually(lambda: assert_prefixes_agree(client, "ep", "ep-ref", after[-1]["ts"]))
            rt.wait_drained(timeout=120)
        finally:
            stop.set()
            supervisor.join()
    counts = counters(client, "ep")
    assert counts["events_applied"] == len(events) and not counts.get("events_duplicate")
    assert int(client.get("ep:clock")) >= after[0]["ts"]  # the region stream read the new log


def _assert(condition: bool) -> None:
    assert condition
