"""Search end to end on a hand-written English-only catalog with the USE encoder:
cross-lingual queries, region filtering, locale fallback, personalisation, persistence,
and the HTTP routes' errors."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from fastapi.testclient import TestClient

from relevo.core.settings import Settings
from relevo.features.context import ContextState
from relevo.models.live import LiveModel
from relevo.models.ranker import Ranker, RankerConfig
from relevo.models.registry import Registry
from relevo.models.rerank import LearnedReranker
from relevo.search.encoder import UseEncoder
from relevo.search.query import QueryUnderstanding
from relevo.search.retrieval import CatalogIndexer
from relevo.search.service import SearchService
from relevo.search.taxonomy import IntentClassifier, read_taxonomy
from relevo.serving.app import KafkaIngest
from relevo.serving.search import router

PRODUCTS = [
    ("kettle", "Stainless steel electric kettle 1.7 litre", "Kitchen", "Acme"),
    ("headphones", "Wireless noise cancelling headphones", "Electronics", "Sonora"),
    ("wallet", "Men's leather wallet", "Accessories", "Hide & Co"),
    ("blocks", "Children's wooden building blocks toy set", "Toys", "Woodies"),
    ("yoga", "Non-slip yoga mat", "Sports", "Zenfit"),
    ("glasses", "Red wine glasses, set of 4", "Kitchen", "Vino"),
    ("backpack", "Waterproof laptop backpack", "Bags", "Trekka"),
    ("shoes", "Women's running shoes", "Shoes", "Swift"),
    ("grinder", "Manual coffee grinder", "Kitchen", "Acme"),
    ("camera", "Digital camera with 20x optical zoom", "Camera", "Optix"),
    ("umbrella", "Compact windproof umbrella", "Accessories", "Brolly"),
    ("stroller", "Lightweight baby stroller", "Baby", "Tots"),
    ("toothbrush", "Rechargeable electric toothbrush", "Personal care", "Brite"),
    ("towel", "Cotton bath towel", "Home", "Softy"),
    ("case", "Smartphone protective case", "Electronics", "Armr"),
    ("dogfood", "Dry dog food for adult dogs, 10 kg", "Pet", "Woof"),
    ("jacket", "Men's winter down jacket", "Clothing", "Polar"),
    ("guitar", "Acoustic guitar for beginners", "Musical instruments", "Strum"),
    ("cookbook", "Italian cookbook: 100 classic recipes", "Books", "Penguin"),
    ("lamp", "LED desk lamp", "Home", "Lumo"),
]
QUERIES = {
    "zh": [("电热水壶", "kettle"), ("无线耳机", "headphones"), ("雨伞", "umbrella"), ("狗粮", "dogfood")],
    "ja": [("電気ケトル", "kettle"), ("ヨガマット", "yoga"), ("ランニングシューズ", "shoes"), ("ギター", "guitar")],
    "de": [("elektrischer Wasserkocher", "kettle"), ("Regenschirm", "umbrella"), ("Kinderwagen", "stroller"),
           ("Schreibtischlampe", "lamp")],
    "fr": [("bouilloire électrique", "kettle"), ("sac à dos pour ordinateur portable", "backpack"),
           ("brosse à dents électrique", "toothbrush"), ("verres à vin", "glasses")],
    "es": [("auriculares inalámbricos", "headphones"), ("cartera de cuero", "wallet"),
           ("toalla de baño", "towel"), ("chaqueta de invierno", "jacket")],
}


def english_catalog() -> list[dict]:
    return [{"item_id": item_id, "titles": {"en-GB": title}, "category": category, "brand": brand,
             "price": {"GB": 10.0, "DE": 12.0}, "regions": ["GB", "DE"]}
            for item_id, title, category, brand in PRODUCTS]


@pytest.fixture(scope="module")
def encoder() -> UseEncoder:
    return UseEncoder(threads=2)


@pytest.fixture(scope="module")
def catalog(encoder) -> CatalogIndexer:
    catalog = CatalogIndexer(encoder)
    assert catalog.upsert(english_catalog()) == []
    return catalog


def search(service: SearchService, query: str, **kwargs) -> dict:
    return asyncio.run(service.search(query, **kwargs))


def test_cross_lingual_queries_find_english_products(catalog):
    service = SearchService(catalog)
    ranks = {}
    for language, cases in QUERIES.items():
        for query, expected in cases:
            found = [r["item_id"] for r in search(service, query, k=3)["results"]]
            ranks[(language, query)] = found.index(expected) + 1 if expected in found else None
    assert all(ranks.values()), f"not in the top 3: {[q for q, r in ranks.items() if r is None]}"
    first = sum(r == 1 for r in ranks.values()) / len(ranks)
    assert first >= 0.8, ranks


def test_region_filter_price_and_locale_fallback(encoder):
    catalog = CatalogIndexer(encoder)
    catalog.upsert([
        {"item_id": "at-only", "titles": {"de-DE": "Wasserkocher aus Edelstahl", "en-GB": "Steel kettle"},
         "category": "Kitchen", "price": {"AT": 31.5}, "regions": ["AT"]},
        {"item_id": "gb-only", "titles": {"en-GB": "Electric kettle"}, "category": "Kitchen", "price": 20,
         "regions": ["GB"]},
    ])
    service = SearchService(catalog)
    at = search(service, "kettle", region="at", locale="de-AT")["results"]
    assert [(r["item_id"], r["title"], r["locale"], r["price"]) for r in at] == [
        ("at-only", "Wasserkocher aus Edelstahl", "de-DE", 31.5)]
    gb = search(service, "kettle", region="GB", locale="ja-JP")["results"]
    assert [(r["item_id"], r["locale"], r["price"]) for r in gb] == [("gb-only", "en-GB", 20.0)]
    assert search(service, "kettle", region="US")["results"] == []


def test_personalisation_is_explained(catalog):
    async def features(user_id, region):
        user = {"categories": {"Kitchen": 5.0}, "items": {"grinder": 3.0}, "session_items": ["glasses"]}
        return user, {"items": {"glasses": 9.0}, "categories": {"Kitchen": 1.0}}

    service = SearchService(catalog, features=features)
    plain = search(SearchService(catalog), "kitchen things", region="GB", k=20)["results"]
    personal = search(service, "kitchen things", user_id="u1", region="GB", k=20)["results"]
    order = [r["item_id"] for r in personal]
    assert set(order[:3]) == {"glasses", "grinder", "kettle"}  # the user's category, first
    assert order.index("glasses") < [r["item_id"] for r in plain].index("glasses")
    why = next(r for r in personal if r["item_id"] == "glasses")["explanation"]
    assert {"text", "session", "region_popularity", "user_category"} <= set(why)
    assert set(plain[0]["explanation"]) <= {"text", "locale"}
    assert next(r for r in personal if r["item_id"] == "kettle")["explanation"]["user_brand"]["value"] == 1.0


def test_the_serving_learned_model_reorders_results_for_the_session(catalog, tmp_path):
    registry, state = Registry(tmp_path), ContextState()
    live = LiveModel(registry)
    service = SearchService(catalog, reranker=LearnedReranker(live, lambda region: state))
    first_stage = [r["item_id"] for r in search(service, "kitchen things", session_id="s1", k=5)["results"]]
    touched = first_stage[-1]
    state.observe({"type": "click", "ts": int(time.time() * 1000) - 5_000, "session_id": "s1", "user_id": "u1",
                   "region": "GB", "item_id": touched, "kind": "view"})
    assert [r["item_id"] for r in search(service, "kitchen things", session_id="s1", k=5)["results"]] == first_stage
    # A fresh model starts from "what the session touched first", so one version is enough to see it act.
    registry.publish(Ranker(RankerConfig(item_buckets=64, user_buckets=8, region_buckets=8)), parent=None,
                     window=(0, 1), figures={})
    live.refresh()
    results = search(service, "kitchen things", session_id="s1", k=5)["results"]
    assert results[0]["item_id"] == touched and {r["item_id"] for r in results} == set(first_stage)
    assert results[0]["explanation"]["learned"]["model_version"] == 1
    assert results[0]["explanation"]["learned"]["first_stage_position"] == 4
    other_session = search(service, "kitchen things", session_id="s2", k=5)["results"]
    assert other_session[0]["item_id"] != touched


def test_index_persists_across_restart_without_reencoding(catalog, encoder, tmp_path):
    catalog.save(tmp_path / "catalog")
    restarted = CatalogIndexer.open(tmp_path / "catalog", _no_items(encoder))
    before = search(SearchService(catalog), "Wasserkocher", k=5)["results"]
    after = search(SearchService(restarted), "Wasserkocher", k=5)["results"]
    assert [r["item_id"] for r in after] == [r["item_id"] for r in before]
    assert len(restarted) == len(PRODUCTS)


def _no_items(encoder: UseEncoder) -> UseEncoder:
    """The same encoder, but failing if anything asks it to encode items."""
    guarded = copy.copy(encoder)
    guarded._queries = encoder._queries  # USE encodes queries with its item path

    def refuse(texts):
        raise AssertionError("a restart must not re-encode the catalog")

    guarded._items = refuse
    return guarded


def test_query_understanding(catalog, shared_data):
    taxonomy = read_taxonomy(shared_data / "google_taxonomy/google_taxonomy_parallel.tsv", max_depth=1)
    service = SearchService(catalog, QueryUnderstanding(catalog, IntentClassifier(taxonomy, catalog.encoder)))
    out = asyncio.run(service.understand("Acme Wasserkocher für die Küche 1,7 l"))
    assert out["language"]["code"] == "de"
    assert out["entities"]["brands"] == ["Acme"]
    assert {"type": "quantity", "text": "1,7 l"} in out["entities"]["attributes"]
    assert asyncio.run(service.understand("Hundefutter"))["intent"][0]["path"] == "Animals & Pet Supplies"
    assert asyncio.run(service.understand("おもちゃ"))["language"]["code"] == "ja"


@pytest.fixture(scope="module")
def client(catalog, kafka_bootstrap) -> Iterator[TestClient]:
    settings = Settings(search_keys="public", kafka_bootstrap_servers=kafka_bootstrap, topic_prefix="served.")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ingest = KafkaIngest(settings)  # where the served lists go
        await app.state.ingest.start()
        yield
        await app.state.ingest.stop()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    app.state.search = SearchService(catalog)
    app.state.settings = settings
    with TestClient(app, headers={"X-API-Key": "public"}) as client:
        yield client


async def served_list(settings: Settings, search_id: str) -> dict:
    consumer = AIOKafkaConsumer(settings.topic("events.search"), bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        async for record in consumer:
            for event in orjson.loads(record.value):
                if event["search_id"] == search_id:
                    return event
    finally:
        await consumer.stop()
    raise AssertionError("unreachable")


def test_http_search_and_understand(client):
    response = client.get("/v1/search", params={"q": "雨伞", "region": "DE", "locale": "de-AT", "k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["item_id"] == "umbrella" and body["results"][0]["price"] == 12.0
    # the list served is recorded under its search id: a click carrying it becomes a labelled example
    served = asyncio.run(asyncio.wait_for(served_list(client.app.state.settings, body["search_id"]), 30))
    assert served["results"] == [r["item_id"] for r in body["results"]] and served["query"] == "雨伞"
    assert served["region"] == "DE" and served["locale"] == "de-AT" and served["session_id"] == body["search_id"]
    assert body["understanding"]["language"]["code"] == "zh"
    assert client.get("/v1/query/understand", params={"q": "Acme kettle"}).json()["entities"]["brands"] == ["Acme"]


def test_http_a_search_in_flight_leaves_the_event_loop_to_other_requests(client, monkeypatch):
    encoder, encoding, release = client.app.state.search.catalog.encoder, threading.Event(), threading.Event()
    encode = encoder.encode_queries

    def slow_encode(texts):
        encoding.set()
        release.wait(30)  # a search that is still encoding its query
        return encode(texts)
    monkeypatch.setattr(encoder, "encode_queries", slow_encode)
    with ThreadPoolExecutor(1) as pool:
        searching = pool.submit(client.get, "/v1/search", params={"q": "kettle"})
        try:
            assert encoding.wait(30)
            assert client.get("/openapi.json").status_code == 200  # answered by the loop meanwhile
            assert not searching.done()
        finally:
            release.set()
        assert searching.result(30).json()["results"][0]["item_id"] == "kettle"


@pytest.mark.parametrize("params, fragment", [
    ({"q": "kettle", "k": 0}, "greater than or equal to 1"),
    ({"q": "kettle", "k": "many"}, "valid integer"),
    ({"q": "   "}, "q must contain some text"),
    ({}, "Field required"),
    ({"q": "kettle", "region": "D1"}, "region must be a region code"),
    ({"q": "kettle", "locale": "not a locale"}, "locale must be a BCP 47 tag"),
    ({"q": "x" * 501}, "at most 500 characters"),
])
def test_http_bad_parameters_are_clear_422s(client, params, fragment):
    response = client.get("/v1/search", params=params)
    assert response.status_code == 422
    assert fragment in response.text


def test_http_without_a_catalog_is_503():
    app = FastAPI()
    app.include_router(router)
    app.state.settings = Settings(search_keys="public")
    response = TestClient(app).get("/v1/search", params={"q": "kettle"}, headers={"X-API-Key": "public"})
    assert response.status_code == 503 and "no catalog" in response.json()["detail"]
