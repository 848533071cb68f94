"""Suggestions against a real Redis: learning from the stream, filtering, ranking, memory bounds."""

from __future__ import annotations

import itertools

import pytest
import redis.asyncio as aioredis

from relevo.core.keys import Keys
from relevo.suggestions import (
    RankWeights,
    SuggestConfig,
    SuggestionUpdater,
    SuggestService,
)
from relevo.suggestions.config import DEFAULT_CONFIG
from relevo.suggestions.ranking import DEFAULT_WEIGHTS, REGION_ONLY

T0 = 1_541_599_523_000
MINUTE = 60_000
_ids = itertools.count()


def search(query: str, session: str, ts: int = T0, region: str = "FR", user: str | None = None,
           locale: str = "fr-FR", search_id: str | None = None) -> dict:
    n = next(_ids)
    return {"type": "search", "event_id": f"e{n}", "ts": ts, "user_id": user or f"u-{session}",
            "session_id": session, "region": region, "locale": locale,
            "search_id": search_id or f"q{n}", "query": query, "results": []}


def click(search_id: str, session: str, ts: int, kind: str = "click", category: str | None = None) -> dict:
    n = next(_ids)
    ev = {"type": "click", "event_id": f"e{n}", "ts": ts, "user_id": f"u-{session}", "session_id": session,
          "region": "FR", "locale": "fr-FR", "item_id": "i1", "search_id": search_id, "kind": kind}
    return ev | ({"category": category} if category else {})


def sessions(query: str, n: int, ts: int = T0, step: int = MINUTE, **kw: object) -> list[dict]:
    """``n`` searches of ``query`` from ``n`` different sessions, ``step`` ms apart."""
    return [search(query, f"s{next(_ids)}", ts + i * step, **kw) for i in range(n)]


@pytest.fixture
async def suggest(redis_db, redis_url):
    """A factory of (updater, service) pairs sharing one Redis and one config."""
    client = aioredis.Redis.from_url(redis_url)

    def make(config: SuggestConfig = DEFAULT_CONFIG, weights: RankWeights = DEFAULT_WEIGHTS):
        keys = Keys("t")
        return SuggestionUpdater(client, keys, config), SuggestService(client, keys, config, weights)
    yield make
    await client.aclose()


async def queries(service: SuggestService, prefix: str, **kw: object) -> list[str]:
    return [s.query for s in (await service.suggest(prefix, **kw)).suggestions]


async def test_normalisation_folds_case_accents_width_and_keeps_cjk(suggest) -> None:
    updater, service = suggest()
    await updater.process(sessions("Café de Flore", 2) + sessions("東京タワー", 2))
    assert await queries(service, "CAFE", region="FR") == ["cafe de flore"]
    assert await queries(service, "ｃａｆé ｄｅ", region="FR") == ["cafe de flore"]
    assert await queries(service, "東京", region="FR") == ["東京タワー"]
    assert await queries(service, "東", region="JP") == ["東京タワー"]  # other regions back off to global
    await updater.process(sessions("ﾄｳｷｮｳ ｴｷ", 2) + sessions("Москва", 2) + sessions("Αθήνα", 2))
    assert await queries(service, "トウキョウ", region="FR") == ["トウキョウ エキ"]  # half-width kana
    assert await queries(service, "МОСК", region="FR") == ["москва"]
    assert await queries(service, "αθη", region="FR") == ["αθηνα"]


async def test_minimum_support_counts_distinct_sessions(suggest) -> None:
    updater, service = suggest(SuggestConfig(min_support=1.5))
    await updater.process([search("lyon", "a", T0), search("lyon", "a", T0 + 1)])  # one session, twice
    assert await queries(service, "ly", region="FR") == []
    assert await queries(service, "ly", region="FR", user_id="u-a") == ["lyon"]  # their own history
    _, strict = suggest(SuggestConfig(min_support=1.5, own_history=False))
    assert await queries(strict, "ly", region="FR", user_id="u-a") == []
    await updater.process([search("lyon", "b", T0 + 2)])
    assert await queries(service, "ly", region="FR") == ["lyon"]


async def test_personal_data_and_blocklist_are_never_suggested(suggest) -> None:
    updater, service = suggest(SuggestConfig(blocklist=("Casino",)))
    junk = ["jane.doe@example.com", "+33 6 12 34 56 78", "0612345678", "ordre 4242424242424242",
            "casino royal", "www.example.com"]
    await updater.process([e for q in junk for e in sessions(q, 3)] + sessions("casinos de nice", 3))
    for prefix in ["j", "+", "0", "o", "w", "ca"]:
        assert await queries(service, prefix, region="FR") == (["casinos de nice"] if prefix == "ca" else [])
    # A term blocklisted after the fact disappears at serving time.
    _, strict = suggest(SuggestConfig(blocklist=("casino", "casinos")))
    assert await queries(strict, "ca", region="FR") == []


async def test_regions_are_kept_apart(suggest) -> None:
    updater, service = suggest()
    await updater.process(sessions("berlin", 8, region="DE", locale="de-DE")
                          + sessions("bordeaux", 3, region="FR"))
    assert await queries(service, "b", region="FR") == ["bordeaux", "berlin"]
    assert await queries(service, "b", region="DE") == ["berlin", "bordeaux"]
    _, region_only = suggest(weights=REGION_ONLY)
    assert await queries(region_only, "b", region="FR") == ["bordeaux"]


async def test_a_trending_query_rises_above_a_steady_favourite(suggest) -> None:
    updater, service = suggest()
    week = 7 * 24 * 60 * MINUTE
    await updater.process(sessions("madrid", 40, T0, step=week // 40))  # steady, all week
    now = T0 + week
    await updater.process(sessions("malaga", 8, now - 10 * MINUTE, step=MINUTE))  # a burst, just now
    result = await service.suggest("ma", region="FR")
    assert [s.query for s in result.suggestions] == ["malaga", "madrid"]
    assert result.suggestions[0].signals["trend"] > 1
    _, popular = suggest(weights=RankWeights(0, 0, 1, 0, 0, 0))
    assert await queries(popular, "ma", region="FR") == ["madrid", "malaga"]


async def test_clicks_after_a_search_lift_its_query(suggest) -> None:
    updater, service = suggest()
    events = sessions("nantes", 3) + sessions("nancy", 3)
    await updater.process(events)
    assert await queries(service, "nan", region="FR") == ["nancy", "nantes"]  # tie: alphabetical
    fresh_updater, _ = suggest()  # clicks handled by another worker find their search in Redis
    nantes_searches = [e for e in events if e["query"] == "nantes"]
    await fresh_updater.process([click(e["search_id"], e["session_id"], e["ts"] + 5, "cart")
                                 for e in nantes_searches])
    assert await queries(service, "nan", region="FR") == ["nantes", "nancy"]


async def test_user_history_lifts_the_users_own_queries(suggest) -> None:
    updater, service = suggest()
    await updater.process(sessions("nice", 6) + sessions("nimes", 2)
                          + [search("nimes", f"mine{i}", T0 + MINUTE, user="me") for i in range(3)])
    assert (await queries(service, "ni", region="FR"))[0] == "nice"
    assert (await queries(service, "ni", region="FR", user_id="me"))[0] == "nimes"


async def test_redelivered_batches_change_nothing(suggest, redis_db) -> None:
    updater, service = suggest()
    events = sessions("rennes", 3)
    await updater.process(events)
    before = (await service.suggest("re", region="FR")).suggestions
    await updater.process(events)
    assert (await service.suggest("re", region="FR")).suggestions == before


async def test_landmarks_rebase_instead_of_overflowing(suggest) -> None:
    updater, service = suggest(SuggestConfig(short_half_life_s=1, long_half_life_s=60))
    await updater.process(sessions("reims", 2, T0))
    later = T0 + 30 * 24 * 60 * MINUTE  # 2.6 million short half-lives later
    await updater.process(sessions("reims", 2, later, step=1000, locale="fr-BE"))
    [reims] = (await service.suggest("rei", region="FR")).suggestions
    assert 0 < reims.score < 100


async def test_memory_stays_bounded_under_a_flood_of_unique_queries(suggest, redis_db) -> None:
    config = SuggestConfig(per_prefix=8, max_queries=300, max_user_queries=5, max_prefix_chars=6)
    updater, service = suggest(config)
    flood = [search(f"spam {i:05d} x", f"s{i % 997}-{r}", T0 + i, user=f"bot{i % 3}")
             for i in range(2000) for r in range(2)]
    for start in range(0, len(flood), 500):
        await updater.process(flood[start:start + 500])
    keys = [k.decode() for k in redis_db.keys("t:{*}:sugg*")]
    sets = [k for k in keys if redis_db.type(k) == b"zset"]
    caps = {":sup": config.max_queries, ":u:": config.max_user_queries, ":px": config.per_prefix}
    for key in sets:
        assert redis_db.zcard(key) <= next(cap for part, cap in caps.items() if part in key), key
    # Prefixes are at most 6 characters: "s", "sp", "spa", "spam", "spam 0" (no trailing space), long
    # per region, locale and globally, short per region and globally.
    assert len([k for k in sets if ":px" in k]) == 5 * (3 + 2)
    assert all(redis_db.ttl(k) > 0 for k in keys if not k.endswith(":sugg:clock"))
    assert len(await queries(service, "spam", region="FR", k=50)) == config.per_prefix
