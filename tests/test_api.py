"""The HTTP API in-process, against the real broker and Redis: ingest, features, operations."""

from __future__ import annotations

import time

import orjson
import pytest
from fastapi.testclient import TestClient

from relevo.core.settings import Settings
from relevo.serving.app import create_app
from tests.streamkit import T0

KEY = {"X-API-Key": "ingest-secret"}
READ = {"X-API-Key": "read-secret"}
SECRETS = {"ingest_keys": "ingest-secret", "read_keys": "read-secret", "search_keys": "public-key",
           "admin_keys": "admin-secret"}


@pytest.fixture(scope="module")
def api(kafka_bootstrap, redis_url, tmp_path_factory):
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, redis_url=redis_url, key_prefix="api",
                        topic_prefix="api.", data_dir=tmp_path_factory.mktemp("api"), max_batch_events=50,
                        **SECRETS)
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
