"""The online store against a real Redis: values match a plain-Python recomputation."""

from __future__ import annotations

import math
import random

import pytest
import redis.asyncio as aioredis

from features.definitions import REGION_ITEMS, USER_ITEMS, USER_WEIGHTS
from features.keys import Keys
from features.store import FeatureWriter, OnlineStore

T0 = 1_541_599_523_000


def synthetic_events(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        user, region, ts = f"u{rng.randrange(5)}", rng.choice(["FR", "DE"]), T0 + i * 60_000
        common = {"event_id": f"e{i}", "ts": ts, "user_id": user, "session_id": f"{user}-s{i // 40}",
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
    totals: dict[tuple[str, str], float] = {}
    for ev in events:
        if ev["type"] != "click" or not weights.get(ev["kind"]):
            continue
        k = (ev[entity_key], ev["item_id"])
        age_s = (as_of - ev["ts"]) / 1000
        totals[k] = totals.get(k, 0.0) + weights[ev["kind"]] * math.pow(2, -age_s / half_life_s)
    return totals


@pytest.fixture
async def store(redis_db, redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield FeatureWriter(client, Keys("t")), OnlineStore(client, Keys("t"))
    await client.aclose()


async def test_features_match_plain_python_recomputation(store) -> None:
    writer, reader = store
    events = synthetic_events(400)
    for start in range(0, len(events), 37):
        await writer.process(events[start:start + 37])
    as_of = events[-1]["ts"]
    assert await reader.clock() == as_of

    want_user = expected_decayed(events, as_of, "user_id", USER_WEIGHTS, USER_ITEMS.half_life_s)
    for user in {u for u, _ in want_user}:
        got = (await reader.user(user))["items"]
        want = {i: v for (u, i), v in want_user.items() if u == user}
        assert got.keys() == want.keys()
        for item, value in want.items():
            assert got[item] == pytest.approx(value, rel=1e-9)

    region_weights = {"click": 1.0, "cart": 2.0}
    want_region = expected_decayed(events, as_of, "region", region_weights, REGION_ITEMS.half_life_s)
    fr = await reader.region("FR")
    for (region, item), value in want_region.items():
        if region == "FR":
            assert fr["items"][item] == pytest.approx(value, rel=1e-9)
    searches = sum(1 for e in events if e["type"] == "search" and e["region"] == "FR")
    assert fr["activity"]["searches"] == pytest.approx(
        sum(math.pow(2, -(as_of - e["ts"]) / 1000 / 86400) for e in events
            if e["type"] == "search" and e["region"] == "FR"), rel=1e-9)
    assert searches > 0

    item = await reader.item("i3")
    shown = sum(e.get("results", []).count("i3") for e in events)
    assert item["impressions"] == shown
    assert item["clicks"] == sum(1 for e in events if e.get("item_id") == "i3" and e.get("kind") == "click")


async def test_redelivered_and_reordered_batches_apply_once(store, redis_db) -> None:
    writer, reader = store
    events = synthetic_events(200, seed=3)
    await writer.process(events)
    once = await reader.user("u1")
    shuffled = events[:]
    random.Random(1).shuffle(shuffled)
    await writer.process(shuffled)  # every id seen: nothing changes
    assert await reader.user("u1") == once

    redis_db.flushdb()
    for start in range(0, 200, 50):  # another order, with a redelivered overlap
        await writer.process(shuffled[max(0, start - 10):start + 50])
    again = await reader.user("u1")
    assert again["recent_items"] == once["recent_items"]
    assert again["items"] == pytest.approx(once["items"], rel=1e-9)


async def test_unknown_entities_and_hostile_ids(store) -> None:
    writer, reader = store
    assert await reader.user("nobody") is None
    assert await reader.region("XX") is None
    assert await reader.item("nothing") is None
    hostile = "u:1 * \n?"
    await writer.process([{"type": "click", "event_id": "h1", "ts": T0, "user_id": hostile,
                           "session_id": "s", "region": "FR", "item_id": "i:*", "kind": "click"}])
    user = await reader.user(hostile)
    assert user["recent_items"] == ["i:*"]
    assert await reader.user("u") is None
