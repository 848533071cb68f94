"""The online store against a real Redis: values match a plain-Python recomputation."""

from __future__ import annotations

import math
import random

import pytest
import redis
import redis.asyncio as aioredis

from relevo.core.keys import Keys
from relevo.core.redis import connect, pipelined
from relevo.features import writer as writer_module
from relevo.features.definitions import REGION_ITEMS, USER_ITEMS, USER_WEIGHTS
from relevo.features.online import OnlineStore
from relevo.features.writer import FeatureWriter
from relevo.streams.eventtime import stamp
from tests.streamkit import T0, counters, expected_decayed, synthetic_events


@pytest.fixture
async def store(redis_db, redis_url):
    client = connect(redis_url)
    yield FeatureWriter(client, Keys("t")), OnlineStore(client, Keys("t"))
    await client.aclose()


async def test_a_read_of_some_fields_is_the_full_read_cut_down(store) -> None:
    writer, reader = store
    events = synthetic_events(300, seed=3)
    await writer.process(events)
    users = sorted({e["user_id"] for e in events})
    full, regions, items = await reader.many(users, ["FR", "DE"], ["i1", "nope"])
    assert full == [await reader.user(u) for u in users] and all(full)  # one read of many = a read of each
    assert regions == [await reader.region("FR"), await reader.region("DE")] and items[1] is None
    # a user is None when no feature read holds anything: without categories, a read of categories alone
    for fields, known in ((["categories"], lambda u: u["categories"]), (["session_items", "locale"], bool),
                          (["price_band"], lambda u: u["price_band"])):
        some, _, _ = await reader.many(users, [], [], user_fields=fields)
        assert some == [{k: v for k, v in u.items() if k in {"user_id", *fields, "as_of"}} if known(u) else None
                        for u in full], fields
    ctr = await reader.region("FR", fields=["ctr"])
    assert ctr == {"region": "FR", "ctr": regions[0]["ctr"], "as_of": regions[0]["as_of"]}
    with pytest.raises(ValueError, match="unknown field"):
        await reader.user(users[0], fields=["colour"])


async def test_a_cluster_reads_what_a_single_server_reads(store, redis_cluster_url) -> None:
    """The same events written to a single server and to a three-master cluster read the same:
    a read's commands span slots and nodes, which a cluster pipelines per node."""
    writer, reader = store
    events = synthetic_events(300, seed=6)
    cluster = connect(redis_cluster_url)
    prefix = f"c{random.randrange(10**9)}"  # the session's cluster is shared: keys of this test's own
    try:
        on_cluster = FeatureWriter(cluster, Keys(prefix)), OnlineStore(cluster, Keys(prefix))
        for write, _ in (store, on_cluster):
            await write.process(events)
        users = sorted({e["user_id"] for e in events})
        entities = users, ["FR", "DE", "XX"], ["i1", "i2", "nope"]
        single = await reader.many(*entities)
        assert all(single[0]) and single == await on_cluster[1].many(*entities)
    finally:
        await cluster.aclose()


async def test_reads_and_writes_outlive_a_script_flush(store, redis_url) -> None:
    writer, reader = store
    await writer.process(synthetic_events(100, seed=4))
    before = await reader.user("u1")
    await writer.redis.script_flush()  # what a restarted or failed-over server has lost
    assert await reader.user("u1") == before
    await writer.redis.script_flush()
    await writer.process(synthetic_events(100, seed=5, prefix="again-"))
    assert counters(redis.Redis.from_url(redis_url), "t")["events_applied"] == 200


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


async def test_pipelined_replies_come_in_order_with_errors_in_place_and_a_broken_read_leaves_nothing_behind(
        redis_db, redis_url) -> None:
    client = connect(redis_url, socket_timeout=0.3)
    try:
        ok, error, value = await pipelined(client, [("SET", "k", "v"), ("INCR", "k"), ("GET", "k")])
        assert (ok, value) == (b"OK", b"v") and isinstance(error, redis.ResponseError)
        with pytest.raises(redis.TimeoutError):  # the server answers the GET, then holds the BLPOP past the timeout
            await pipelined(client, [("GET", "k"), ("BLPOP", "empty", 5)])
        # the connection with the BLPOP's reply pending was dropped: the next read gets its own replies
        assert await pipelined(client, [("GET", "k")]) == [b"v"]
        assert await pipelined(client, [("ZREVRANGE", "nothing", 0, -1, "WITHSCORES")]) == [[]]
    finally:
        await client.aclose()


async def test_session_items_are_the_latest_sessions_read_with_only_their_features(store) -> None:
    writer, reader = store
    click = {"type": "click", "user_id": "u", "region": "FR", "kind": "click"}
    await writer.process([{**click, "event_id": f"e{n}", "ts": T0 + n, "session_id": session, "item_id": item}
                          for n, (session, item) in enumerate([("s1", "a"), ("s2", "b:1"), ("s1", "c"),
                                                               ("s2", "d"), ("s2", "b:1")])])
    await reader.redis.config_resetstat()
    user = await reader.user("u", fields=["session_id", "session_items"])
    stats = await reader.redis.info("commandstats")
    assert (user["session_id"], user["session_items"]) == ("s2", ["b:1", "d"])
    # the sessions and their items; GETs of the clock (here: the shards' latest event times, no worker publishes one)
    assert stats["cmdstat_zrevrange"]["calls"] == 2
    assert set(stats) == {"cmdstat_config|resetstat", "cmdstat_get", "cmdstat_zrevrange"}


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


async def test_a_batch_that_fails_before_any_apply_is_unclaimed(store, redis_url, monkeypatch) -> None:
    """The worker dead-letters such a batch; re-driven (read again at other positions) it applies once."""
    writer, reader = store
    events = synthetic_events(120, seed=8)

    def read_at(offset: int) -> list[dict]:
        return [stamp([dict(e)], "events.click", 0, offset + n)[0] for n, e in enumerate(events)]

    def broken(_: object) -> None:
        raise ValueError("an event the aggregation cannot take")
    monkeypatch.setattr(writer_module, "_aggregate", broken)
    with pytest.raises(ValueError):
        await writer.process(read_at(0))
    monkeypatch.undo()
    await writer.process(read_at(1000))  # relevo dlq redrive: the same events, new positions
    reference = FeatureWriter(writer.redis, Keys("t-ref"))
    await reference.process(events)
    assert await reader.user("u1") == await OnlineStore(writer.redis, Keys("t-ref")).user("u1")
    assert counters(redis.Redis.from_url(redis_url), "t")["events_applied"] == len(events)


def test_commands_packed_in_c_are_the_bytes_redis_py_packs() -> None:
    python_packed = aioredis.Connection()  # redis-py's own packer
    c_packed = connect("redis://127.0.0.1:1/0", wait_for_connection_s=1).connection_pool.connection_class()
    for args in [("SET", "k", 0.1), ("CLIENT SETNAME", "w"), ("EVALSHA", "f" * 40, 2, "rv:{1}:a", "é", b"\x00\xff",
                                                              1e20, 3.0, -5, 1 / 3)]:
        assert c_packed.pack_command(*args) == [b"".join(python_packed.pack_command(*args))]
