"""The typed API: every endpoint's schemas in ``/openapi.json``, the event contract as a discriminated
union that matches the validator, and the catalog endpoints publishing to ``catalog.items``."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi.testclient import TestClient

from relevo.core.settings import Settings
from relevo.serving.app import create_app
from relevo.serving.schemas import EVENT_MODELS, SuggestAnswer
from relevo.streams.events import COMMON, SCHEMAS
from relevo.streams.topics import CATALOG

SECRETS = {"ingest_keys": "ingest-secret", "read_keys": "read-secret", "search_keys": "public-key",
           "admin_keys": "admin-secret"}
INGEST = {"X-API-Key": "ingest-secret"}
UNTYPED = {("/metrics", "get")}  # Prometheus text


@pytest.fixture(scope="module")
def api(kafka_bootstrap, redis_url, tmp_path_factory):
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, redis_url=redis_url, key_prefix="oapi",
                        topic_prefix="oapi.", data_dir=tmp_path_factory.mktemp("oapi"), **SECRETS)
    with TestClient(create_app(settings)) as client:
        client.settings = settings
        yield client


@pytest.fixture(scope="module")
def spec(api) -> dict:
    return api.get("/openapi.json").json()


def test_every_endpoint_has_a_typed_answer(spec) -> None:
    untyped = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation["responses"]["200"].get("content", {}).get("application/json", {})
            schema = content.get("schema", {})
            if (path, method) not in UNTYPED and not ("$ref" in schema or schema.get("type") == "array"):
                untyped.append(f"{method.upper()} {path}")
    assert not untyped, f"no response model: {untyped}"
    assert {"/v1/catalog/items", "/v1/catalog/items/{item_id}", "/v1/dashboard"} <= set(spec["paths"])


def test_batch_bodies_are_described(spec) -> None:
    schemas = spec["components"]["schemas"]
    for path, model in (("/v1/events", "Event"), ("/v1/catalog/items", "CatalogItem")):
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        assert {"application/json", "application/x-ndjson"} <= set(body)
        assert {"$ref": f"#/components/schemas/{model}"} in body["application/json"]["schema"]["anyOf"]
        assert model in schemas
    union = schemas["Event"]
    assert union["discriminator"]["propertyName"] == "type"
    assert set(union["discriminator"]["mapping"]) == set(SCHEMAS)
    for answer in ("SearchAnswer", "SearchResult", "Signal", "Learned", "SuggestAnswer", "AlertOut", "ModelList",
                   "UserFeatures", "RegionFeatures", "ItemFeatures", "Readiness", "Dashboard", "RegionSearch"):
        assert answer in schemas, answer


@pytest.mark.parametrize("event_type", sorted(SCHEMAS))
def test_the_event_models_name_the_contract_s_fields(event_type: str) -> None:
    model = EVENT_MODELS[event_type]
    contract = {**COMMON, **SCHEMAS[event_type]}
    fields = {name: f for name, f in model.model_fields.items() if name != "type"}
    assert set(fields) == set(contract)
    assert {n for n, f in fields.items() if f.is_required()} == {n for n, f in contract.items() if f.required}


def test_suggest_answers_as_documented(api) -> None:
    answer = api.get("/v1/suggest", params={"prefix": "ho", "explain": True}, headers={"X-API-Key": "public-key"})
    assert answer.status_code == 200
    SuggestAnswer.model_validate(answer.json())


def test_docs_pages_load_their_assets_from_this_server(api) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = api.get(page).text
        assert "cdn." not in html and asset in html
        src = next(part.split('"')[1] for part in html.split("src=")[1:] if asset in part)
        assert api.get(src).status_code == 200


def _catalog_records(settings: Settings, count: int) -> list[tuple[bytes, dict]]:
    async def read() -> list[tuple[bytes, dict]]:
        consumer = AIOKafkaConsumer(settings.topic(CATALOG), bootstrap_servers=settings.kafka_bootstrap_servers,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            found: list[tuple[bytes, dict]] = []
            async with asyncio.timeout(30):
                while len(found) < count:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        found += [(r.key, orjson.loads(r.value)) for r in records]
            return found
        finally:
            await consumer.stop()
    return asyncio.run(read())


def test_catalog_items_are_published_with_per_item_errors(api) -> None:
    items = [{"item_id": "k1", "titles": {"en-GB": "Red kettle"}, "category": "Kitchen", "regions": ["gb"]},
             {"item_id": "k2", "titles": {}, "category": "Kitchen", "regions": ["GB"]}, "not an item"]
    answer = api.post("/v1/catalog/items", content=orjson.dumps(items), headers=INGEST)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    assert [r["accepted"] for r in body["results"]] == [True, False, False]
    assert "titles" in body["results"][1]["reason"] and body["results"][1]["item_id"] == "k2"
    assert api.delete("/v1/catalog/items/k1", headers=INGEST).json() == {"item_id": "k1", "deleted": True}
    records = _catalog_records(api.settings, 2)
    assert records[0] == (b"k1", {**items[0], "regions": ["GB"], "brand": None, "price": None})
    assert records[1] == (b"k1", {"item_id": "k1", "deleted": True})


def test_catalog_writes_need_an_ingest_key(api) -> None:
    assert api.post("/v1/catalog/items", content=b"[]").status_code == 401
    assert api.delete("/v1/catalog/items/k1", headers={"X-API-Key": "read-secret"}).status_code == 403
    too_many = orjson.dumps([{"item_id": str(i)} for i in range(1001)])
    assert api.post("/v1/catalog/items", content=too_many, headers=INGEST).status_code == 413
