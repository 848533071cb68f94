"""``GET /v1/suggest`` on its own FastAPI app, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.features.online import OnlineStore
from relevo.features.writer import FeatureWriter
from relevo.runtime.cli import build_parser
from relevo.serving.suggest import router
from relevo.streams.events import validate
from relevo.suggestions import SuggestConfig, SuggestionUpdater, SuggestService

T0 = 1_541_599_523_000


class Affinity:
    """A stand-in feature store holding one user's category affinity."""

    async def user(self, user_id: str, *, fields: Collection[str] | None = None) -> dict | None:
        assert fields == ("categories",)  # suggestions read only what they rank with
        return {"user_id": user_id, "categories": {"beach": 5.0}} if user_id == "surfer" else None


@pytest.fixture
async def client(redis_db, redis_url):
    redis = aioredis.Redis.from_url(redis_url)
    updater = SuggestionUpdater(redis, Keys("t"), SuggestConfig())
    events = []
    for i, (query, category) in enumerate([("Porto", "city")] * 3 + [("Portimão", "beach")] * 2):
        common = {"ts": T0 + i, "user_id": f"u{i}", "session_id": f"s{i}", "region": "PT", "locale": "pt-PT"}
        events += [{**common, "type": "search", "event_id": f"q{i}", "search_id": f"q{i}", "query": query},
                   {**common, "type": "click", "event_id": f"c{i}", "search_id": f"q{i}", "item_id": "i",
                    "kind": "click", "category": category}]
    await updater.process(events)
    app = FastAPI()
    app.state.suggest = SuggestService(redis, Keys("t"), SuggestConfig(), features=Affinity())
    app.state.settings = Settings(read_keys="reader")
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test",
                                 headers={"X-API-Key": "reader"}) as http:
        yield http
    await redis.aclose()


async def test_suggest_ranks_and_explains(client) -> None:
    body = (await client.get("/v1/suggest", params={"prefix": "PORT", "region": "PT"})).json()
    assert body["prefix"] == "port" and body["as_of"] == T0 + 4
    assert [s["query"] for s in body["suggestions"]] == ["porto", "portimao"]
    assert [s["text"] for s in body["suggestions"]] == ["Porto", "Portimão"]
    assert "signals" not in body["suggestions"][0]

    params = {"prefix": "port", "region": "PT", "user_id": "surfer", "explain": "true"}
    found = {s["query"]: s for s in (await client.get("/v1/suggest", params=params)).json()["suggestions"]}
    assert found["portimao"]["signals"]["intent"] > 0 == found["porto"]["signals"]["intent"]  # beach fan
    assert found["porto"]["counts"]["support"] == pytest.approx(3, rel=1e-3)
    for s in found.values():
        assert s["score"] == pytest.approx(sum(s["signals"].values()), abs=1e-5)


async def test_bad_requests_are_clear_4xx(client) -> None:
    assert (await client.get("/v1/suggest")).status_code == 422
    assert (await client.get("/v1/suggest", params={"prefix": "p", "k": 0})).status_code == 422
    response = await client.get("/v1/suggest", params={"prefix": "p", "region": "F:R"})
    assert response.status_code == 422 and response.json()["detail"]
    assert (await client.get("/v1/suggest", params={"prefix": "   "})).json()["suggestions"] == []


def test_cli_prints_suggestions_per_prefix_and_region(redis_db, redis_url, capsys) -> None:
    async def learn() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        await SuggestionUpdater(redis, Keys("t")).process(
            [{"type": "search", "event_id": f"q{i}", "search_id": f"q{i}", "ts": T0 + i, "user_id": f"u{i}",
              "session_id": f"s{i}", "region": "PT", "query": "Lisboa"} for i in range(2)])
        await redis.aclose()
    asyncio.run(learn())
    parser = build_parser()
    args = parser.parse_args(["suggest", "LIS", "xyz", "--region", "PT"])
    assert args.func(args, Settings(redis_url=redis_url, key_prefix="t")) == 0
    out = capsys.readouterr().out
    assert "| LIS | PT | Lisboa |" in out and "| xyz | PT | — |" in out


async def test_intent_comes_from_the_real_feature_store(redis_db, redis_url) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    keys = Keys("t")
    events = []
    for i, (query, category) in enumerate([("Nice", "beach")] * 3 + [("Nimes", "museum")] * 3):
        common = {"ts": T0 + i, "user_id": f"u{i}", "session_id": f"s{i}", "region": "FR", "locale": "fr-FR"}
        events += [{**common, "type": "search", "event_id": f"q{i}", "search_id": f"q{i}", "query": query},
                   {**common, "type": "click", "event_id": f"c{i}", "search_id": f"q{i}", "item_id": f"i{i}",
                    "kind": "click", "category": category}]
    for processor in (FeatureWriter(redis, keys), SuggestionUpdater(redis, keys)):
        await processor.process([validate(e) for e in events])
    service = SuggestService(redis, keys, features=OnlineStore(redis, keys))
    for user, top in (("u0", "nice"), ("u3", "nimes")):  # each clicked their own category once
        result = await service.suggest("ni", user_id=user, region="FR")
        assert result.suggestions[0].query == top and result.suggestions[0].signals["intent"] > 0
    await redis.aclose()
