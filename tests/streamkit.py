"""Shared helpers of the stream tests: synthetic events, a running Relevo, feature snapshots."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from relevo.core.keys import SHARDS, Keys
from relevo.core.settings import Settings
from relevo.runtime.processes import Runtime
from relevo.streams.producer import EventProducer

T = TypeVar("T")
T0 = 1_541_599_523_000


def synthetic_events(n: int, seed: int = 7, users: int = 5, prefix: str = "e") -> list[dict]:
    """Searches and clicks of a few users in two regions, one minute apart."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        user, region, ts = f"u{rng.randrange(users)}", rng.choice(["FR", "DE"]), T0 + i * 60_000
        common = {"event_id": f"{prefix}{i}", "ts": ts, "user_id": user, "session_id": f"{user}-s{i // 40}",
                  "region": region, "locale": "fr-FR" if region == "FR" else "de-DE"}
        item = f"i{rng.randrange(12)}"
        if rng.random() < 0.3:
            events.append({**common, "type": "search", "search_id": f"q{i}", "query": "Hôtel Paris",
                           "results": [f"i{rng.randrange(12)}" for _ in range(5)]})
        else:
            kind = rng.choice(["view", "click", "cart"])
            events.append({**common, "type": "click", "item_id": item, "kind": kind,
                           "category": f"c{int(item[1:]) % 3}", "price": 50.0 + rng.randrange(100)})
    return events


def expected_decayed(events: list[dict], as_of: int, entity_key: str, weights: dict[str, float],
                     half_life_s: float) -> dict[tuple[str, str], float]:
    """Plain-Python decayed interest of each (entity, item), straight from the definition."""
    totals: dict[tuple[str, str], float] = {}
    for ev in events:
        if ev["type"] != "click" or not weights.get(ev["kind"]):
            continue
        k = (ev[entity_key], ev["item_id"])
        age_s = (as_of - ev["ts"]) / 1000
        totals[k] = totals.get(k, 0.0) + weights[ev["kind"]] * math.pow(2, -age_s / half_life_s)
    return totals


def send(settings: Settings, events: list[dict], per_record: int = 200) -> None:
    async def go() -> None:
        async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                                 partitions=settings.partitions, batch_events=per_record) as producer:
            await producer.send(events)
    asyncio.run(go())


def eventually(check: Callable[[], T], timeout: float = 60.0) -> T:
    """Run ``check`` until it stops raising AssertionError and return what it returns (the last failure
    is raised at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def eventually_async(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Yield to the loop until ``condition()`` holds (what runs on the same loop, a stage, gets there)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


def counters(client: redis.Redis, prefix: str) -> dict[str, int]:
    """The workers' counters and the feature shards' summed (what ``read_stats`` reports)."""
    keys = Keys(prefix)
    total: dict[str, int] = {}
    for key in [keys.stats, *(keys.in_shard(s, "counts") for s in range(SHARDS))]:
        for field, value in client.hgetall(key).items():
            total[field.decode()] = total.get(field.decode(), 0) + int(float(value))
    return total


def wait_applied(client: redis.Redis, prefix: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = counters(client, prefix)
        if done.get("events_applied", 0) + done.get("events_duplicate", 0) >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{n} events not applied within {timeout}s")


def _feature_keys(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Every feature key under ``prefix`` by its name without prefix and shard tag."""
    found = {}
    for key in client.scan_iter(f"{prefix}:*", count=1000):
        name = key.decode()[len(prefix) + 1:].split(":", 1)[-1]
        if name.split(":")[0] in ("user", "region", "item") and not name.endswith("~L"):
            found[name] = key.decode()  # not a feature: dedupe sets, counters, other processors' keys, landmarks
    return found


def _pipelined(client: redis.Redis, calls: list[Callable[[Any], Any]], chunk: int = 1000) -> list[Any]:
    """The replies of ``calls`` (each queues one command on a pipeline), a thousand per round trip:
    a command per round trip made a 44k-key snapshot take 16 s."""
    replies: list[Any] = []
    for start in range(0, len(calls), chunk):
        pipe = client.pipeline(transaction=False)
        for call in calls[start:start + chunk]:
            call(pipe)
        replies += pipe.execute()
    return replies


def feature_snapshot(client: redis.Redis, prefix: str, keys: dict[str, str] | None = None) -> dict[str, object]:
    """Every feature key under ``prefix`` (or those of ``keys``), prefix and shard tag stripped."""
    keys = keys if keys is not None else _feature_keys(client, prefix)
    kinds = _pipelined(client, [lambda pipe, key=key: pipe.type(key) for key in keys.values()])
    kept = [(name, kind if isinstance(kind, str) else kind.decode()) for name, kind in zip(keys, kinds, strict=True)]
    kept = [(name, kind) for name, kind in kept if kind in ("zset", "hash")]
    read = {"zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
            "hash": lambda pipe, key: pipe.hgetall(key)}
    values = _pipelined(client, [lambda pipe, key=keys[name], kind=kind: read[kind](pipe, key) for name, kind in kept])
    return {name: ({m.decode(): s for m, s in value} if kind == "zset" else
                   {k.decode(): float(v) for k, v in value.items()})
            for (name, kind), value in zip(kept, values, strict=True)}


def decayed_as_of(client: redis.Redis, prefix: str, as_of: int) -> dict[str, object]:
    """The snapshot with decayed sums turned into values as of ``as_of`` (landmarks differ by run)."""
    from relevo.features.definitions import FEATURES

    half_lives = {(f.entity, f.name): f.half_life_s for f in FEATURES if f.half_life_s}
    keys = _feature_keys(client, prefix)
    snap = feature_snapshot(client, prefix, keys)  # one listing: a key written meanwhile is read next time
    half_life = {name: half_lives.get((name.split(":")[0], name.split(":")[-1])) for name in snap}
    decayed = [name for name, h in half_life.items() if h]
    landmarks = _pipelined(client, [lambda pipe, key=keys[name] + "~L": pipe.get(key) for name in decayed])
    for name, stored in zip(decayed, landmarks, strict=True):
        assert stored is not None, f"{name} has no landmark yet (still being written)"
        factor = math.pow(2, (int(float(stored)) - as_of) / 1000 / half_life[name])
        snap[name] = {m: v * factor for m, v in snap[name].items()}
    return snap


def assert_close(got: Any, want: Any, what: object = "") -> None:
    """``got == pytest.approx(want, rel=1e-9, abs=1e-12)`` for a mapping or a sequence of numbers,
    checked with ``math.isclose`` first: approx builds an object per value (50 s over a 44k-key
    snapshot), so it only explains a mismatch."""
    if isinstance(want, dict):
        pairs = [(got[k], v) for k, v in want.items()] if got.keys() == want.keys() else None
    else:
        pairs = list(zip(got, want, strict=True)) if len(got) == len(want) else None
    if pairs is None or not all(math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12) for g, w in pairs):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), what


def assert_same_features(got: dict[str, Any], want: dict[str, Any], what: object = "") -> None:
    """``got`` holds ``want``'s feature keys with the same members and values."""
    assert got.keys() == want.keys(), what
    for key, members in want.items():
        assert_close(got[key], members, (what, key))


@contextmanager
def running(tmp: Path, kafka: str, redis_url: str, app_id: str, prefix: str,
            workers: int = 1, **settings_: Any) -> Iterator[Runtime]:
    """A worker (no API) on the test's servers, with its own consumer group and key prefix."""
    settings = Settings(kafka_bootstrap_servers=kafka, redis_url=redis_url, data_dir=tmp, app_id=app_id,
                        key_prefix=prefix, topic_prefix=f"{app_id}.", partitions=2, session_timeout_s=6.0,
                        **settings_)
    with Runtime(settings, workers=workers, api=False) as runtime:
        yield runtime
