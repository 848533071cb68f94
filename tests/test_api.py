"""The HTTP API in-process, against the real broker and Redis and a worker: ingest, features,
operations, ranking, and a click on a served list coming back as a labelled example."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import orjson
import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.features.context import FEATURES
from relevo.features.writer import FeatureWriter
from relevo.models.ranker import Ranker, RankerConfig
from relevo.serving.app import create_app
from tests.streamkit import T0, running
from tests.test_worker import read_examples

KEY = {"X-API-Key": "ingest-secret"}
READ = {"X-API-Key": "read-secret"}
SEARCH = {"X-API-Key": "public-key"}
SECRETS = {"ingest_keys": "ingest-secret", "read_keys": "read-secret", "search_keys": "public-key",
           "admin_keys": "admin-secret"}


@pytest.fixture(scope="module")
def api(kafka_bootstrap, redis_url, tmp_path_factory):
    with running(tmp_path_factory.mktemp("api"), kafka_bootstrap, redis_url, "api", "api", processors="examples",
                 examples_wait_s=5.0, examples_batch_age_s=0.3, idle_s=1.0) as worker:
        worker.wait_workers_ready()
        settings = replace(worker.settings, max_batch_events=50, rerank_depth=0, **SECRETS)
        with TestClient(create_app(settings)) as client:
            yield client


def click(i: int, **extra: object) -> dict:
    return {"type": "click", "event_id": f"a{i}", "ts": T0 + i, "user_id": "u1", "session_id": "s1",
            "region": "FR", "item_id": f"i{i}", **extra}


def test_ingest_requires_an_api_key(api) -> None:
    assert api.post("/v1/events", content=b"[]").status_code == 401
    assert api.post("/v1/events", content=b"[]", headers={"X-API-Key": "nope"}).status_code == 403


def test_ingest_answers_per_event(api) -> None:
    body = orjson.dumps([click(1), click(2, ts="later"), {"type": "refund"}, click(3, kind="cart")])
    answer = api.post("/v1/events", content=body, headers=KEY).json()
    assert answer["accepted"] == 2 and answer["rejected"] == 2
    results = answer["results"]
    assert [r["accepted"] for r in results] == [True, False, False, True]
    assert results[1]["reason"].startswith("ts:") and results[2]["reason"].startswith("type:")


def test_ingest_takes_ndjson_and_reports_bad_lines(api) -> None:
    body = orjson.dumps(click(4)) + b"\n{oops\n" + orjson.dumps(click(5)) + b"\n"
    answer = api.post("/v1/events", content=body, headers={**KEY, "Content-Type": "application/x-ndjson"})
    assert [r["accepted"] for r in answer.json()["results"]] == [True, False, True]
    assert answer.json()["results"][1]["reason"].startswith("malformed JSON")


def test_oversized_batches_are_refused_with_413(api) -> None:
    too_many = orjson.dumps([click(i) for i in range(51)])
    assert api.post("/v1/events", content=too_many, headers=KEY).status_code == 413
    too_big = b"[" + b" " * (4 * 1024 * 1024 + 1) + b"]"
    assert api.post("/v1/events", content=too_big, headers=KEY).status_code == 413


def test_unknown_entities_answer_404_with_a_reason(api) -> None:
    answer = api.get("/v1/features/users/nobody", headers=READ)
    assert answer.status_code == 404 and "nobody" in answer.json()["detail"]
    batch = api.post("/v1/features/batch", json={"users": ["nobody"], "regions": ["ZZ"]}, headers=READ).json()
    assert batch == {"users": {"nobody": None}, "regions": {"ZZ": None}, "items": {}}


def test_a_read_answers_the_fields_asked_for(api) -> None:
    asyncio.run(write_features(api.app.state.settings, [click(20, user_id="fields", category="shoes", price=40.0)]))
    some = api.get("/v1/features/users/fields", params={"fields": ["categories", "locale"]}, headers=READ).json()
    assert set(some) == {"user_id", "categories", "locale", "as_of"} and some["categories"]["shoes"] > 0
    batch = api.post("/v1/features/batch", headers=READ, json={
        "users": ["fields"], "regions": ["FR"], "user_fields": ["price_band"], "region_fields": ["ctr"]}).json()
    assert set(batch["users"]["fields"]) == {"user_id", "price_band", "as_of"}
    assert set(batch["regions"]["FR"]) == {"region", "ctr", "as_of"}
    unknown = api.get("/v1/features/users/fields", params={"fields": "colour"}, headers=READ)
    assert unknown.status_code == 422 and "categories" in unknown.text  # names the fields there are


async def write_features(settings: Settings, events: list[dict]) -> None:
    """Apply ``events`` to the API's feature store (this module's worker keeps no features)."""
    client = aioredis.Redis.from_url(settings.redis_url)
    await FeatureWriter(client, Keys(settings.key_prefix)).process(events)
    await client.aclose()


def test_health_readiness_and_metrics(api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 10
    while api.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.get("/readyz").json()["ready"] is True
    text = api.get("/metrics").text
    assert "relevo_feature_freshness_seconds_bucket" in text
    assert "openapi" in api.get("/openapi.json").text


def test_python_client_round_trip(api) -> None:
    from relevo.serving.client import RelevoClient, RelevoError

    client = RelevoClient.__new__(RelevoClient)
    client.http = api  # the TestClient speaks httpx's interface
    api.headers["X-API-Key"] = "admin-secret"  # an admin key may do everything
    assert client.send_events([click(9)])["accepted"] == 1
    assert client.user("nobody") is None
    assert client.features(users=["nobody"]) == {"users": {"nobody": None}, "regions": {}, "items": {}}
    api.headers["X-API-Key"] = "wrong"
    with pytest.raises(RelevoError, match="403"):
        client.send_events([click(10)])
    del api.headers["X-API-Key"]


def rank(api: TestClient, items: list[str], **extra: object):
    body = {"user_id": "shopper", "session_id": "rs1", "region": "fr",
            "candidates": [{"item_id": i, "price": 10.0 + n} for n, i in enumerate(items)], **extra}
    return api.post("/v1/rank", json=body, headers=SEARCH)


def test_rank_refuses_bad_requests_with_reasons(api) -> None:
    assert api.post("/v1/rank", json={}).status_code == 401
    duplicate = rank(api, ["a", "a"])
    assert duplicate.status_code == 422 and "once" in duplicate.text
    assert rank(api, [f"i{n}" for n in range(501)]).status_code == 422
    assert rank(api, ["a"], region="France").status_code == 422
    partly = api.post("/v1/rank", headers=SEARCH, json={"user_id": "u", "region": "FR", "candidates": [
        {"item_id": "a", "position": 0}, {"item_id": "b"}]})
    assert partly.status_code == 422 and "position" in partly.text
    too_old = rank(api, ["a", "b"], ts=1_000)
    assert too_old.status_code == 422 and "2000-01-01" in too_old.text
    schema = api.get("/openapi.json").json()["components"]["schemas"]
    assert {"RankRequest", "RankResponse", "RankedItem"} <= schema.keys()


def shopper(n: int, item: str, **extra: object) -> dict:
    return {"type": "click", "event_id": f"rk{n}", "ts": T0 + n * 1000, "user_id": "shopper", "session_id": "rs1",
            "region": "FR", "item_id": item, "kind": "view", **extra}


def test_a_click_on_a_ranked_list_becomes_a_labelled_example(api) -> None:
    untouched = rank(api, ["a", "b", "c"], ts=T0, record=False).json()
    assert untouched["fallback"] == "given_order" and untouched["search_id"] is None
    assert [i["item_id"] for i in untouched["items"]] == ["a", "b", "c"]
    assert api.post("/v1/events", json=[shopper(1, "c")], headers=KEY).json()["accepted"] == 1
    # read your writes: the ranking waits until the session's click has reached the region context
    ranked = rank(api, ["a", "b", "c"], ts=T0 + 2000, after_ts=T0 + 1000).json()
    assert ranked["caught_up"] and ranked["fallback"] == "session_rule" and ranked["model_version"] is None
    assert [i["item_id"] for i in ranked["items"]] == ["c", "a", "b"]
    assert ranked["items"][0]["position"] == 2 and ranked["items"][0]["explanation"]["session_rule"] > 0
    search_id = ranked["search_id"]
    cart = shopper(3, "a", kind="cart", search_id=search_id)
    later = {**shopper(60, "z"), "session_id": "other", "user_id": "u2"}  # moves the stream past the search
    assert api.post("/v1/events", json=[cart, later], headers=KEY).json()["accepted"] == 2
    examples = asyncio.run(read_examples(api.app.state.settings, {search_id}, timeout_s=60))
    example = examples[search_id]
    assert example["items"] == ["c", "a", "b"] and example["labels"] == [0, 3, 0]  # the order served
    assert example["region"] == "FR" and example["features"]


def test_the_serving_model_ranks_and_explains_each_item(api) -> None:
    live = api.app.state.models
    live.registry.publish(Ranker(RankerConfig(item_buckets=64, user_buckets=8, region_buckets=8, hidden=8)),
                          parent=None, window=(0, 1), figures={})
    live.refresh()
    body = rank(api, ["a", "b", "c"], ts=T0 + 2000, record=False, explain=2).json()
    assert body["model_version"] == live.version and body["fallback"] is None
    assert sorted(i["item_id"] for i in body["items"]) == ["a", "b", "c"]
    assert all(0 < len(i["explanation"]) <= 2 and set(i["explanation"]) <= set(FEATURES) for i in body["items"])
