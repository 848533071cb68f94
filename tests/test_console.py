"""The operator's console in a real headless Chromium, against a running stack after a replay:
every panel shows the replay's figures; ``/docs`` and ``/redoc`` render with nothing fetched
from outside. The dashboard's screenshot is kept under the test's tmp dir and in
``.relevo/artifacts/dashboard.png`` (not in git)."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from relevo.core.settings import Settings
from relevo.models.registry import Registry
from relevo.models.trainer_worker import registry_dir
from relevo.runtime.demo import BROKEN_RECORDS
from relevo.runtime.processes import Runtime, first_key
from relevo.serving.console import Dashboard
from relevo.streams.producer import EventProducer
from tests.streamkit import eventually, send, wait_applied
from tests.test_deploy import grafana_series
from tests.test_drift import searches
from tests.test_learning import planted_stream

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".relevo" / "artifacts"
PREFIX = "console."
FLAGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # the machine has no network: ask for none
CATALOG = [{"item_id": f"h{i}", "titles": {"fr-FR": f"Hôtel {name}", "en": f"{name} hotel"}, "category": "Hotels",
            "regions": ["FR", "DE"]} for i, name in enumerate(("Paris", "Lyon", "Nice", "Berlin"))]


def replay_events() -> list[dict[str, Any]]:
    """FR: searches for "hôtel" whose click-through falls from 0.4 to 0.2 (a drift alert); DE: sessions
    that click a hidden set of liked items (the trainer learns them), and a query that finds nothing."""
    france = list(searches([(3000, 0.4), (2000, 0.2)], region="FR"))
    germany = [{**e, "region": "DE", "locale": "de-DE", "query": "kaffee"} if e["type"] == "search" else
               {**e, "region": "DE", "locale": "de-DE"} for e in planted_stream(1500, prefix="de-", t0=france[0]["ts"])]
    nothing = [{"type": "search", "event_id": f"none{i}", "ts": france[0]["ts"] + i * 60_000, "user_id": "n",
                "session_id": "n", "region": "DE", "search_id": f"none{i}", "query": "xyzzy", "results": []}
               for i in range(20)]
    return sorted(france + germany + nothing, key=lambda e: e["ts"])


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, redis_url, tmp_path_factory) -> Iterator[dict[str, Any]]:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, redis_url=redis_url, app_id="console",
                        key_prefix="console", topic_prefix=PREFIX, partitions=2, api_port=0,
                        data_dir=tmp_path_factory.mktemp("console"), session_timeout_s=6.0, idle_s=2.0,
                        checkpoint_s=1.0, examples_wait_s=2.0, examples_batch_size=64, examples_batch_age_s=1.0,
                        registry_keep=0)
    events = replay_events()
    with Runtime(settings, workers=1, trainer=True) as runtime:
        runtime.wait_workers_ready(timeout=120)
        s = runtime.settings
        keys = {scope: {"X-API-Key": first_key(s, scope)} for scope in ("ingest", "read", "search")}
        with httpx.Client(base_url=runtime.api_url, timeout=30) as api:
            assert api.post("/v1/catalog/items", content=orjson.dumps(CATALOG), headers=keys["ingest"]).json()[
                "accepted"] == len(CATALOG)
            assert api.delete("/v1/catalog/items/h3", headers=keys["ingest"]).status_code == 200
            send(s, events)
            asyncio.run(_send_broken(s))
            wait_applied(runtime.redis(), s.key_prefix, len(events), timeout=180)
            runtime.wait_drained(timeout=240)
            eventually(lambda: _assert(len(Registry(registry_dir(s)).versions()) >= 2), timeout=240)

            served = []  # searches with a region record the list they served on events.search

            def search(params: dict[str, str]) -> httpx.Response:
                answer = api.get("/v1/search", params=params, headers=keys["search"])
                if answer.status_code == 200 and answer.json()["search_id"]:
                    served.append(answer.json()["search_id"])
                return answer
            def found_hotels() -> dict[str, Any]:
                answer = search({"q": "hôtel", "k": "10"})
                assert answer.status_code == 200 and answer.json()["results"], answer.text
                return answer.json()
            found = eventually(found_hotels, timeout=300)  # the API loads the encoder and follows catalog.items
            for _ in range(10):
                api.get("/v1/suggest", params={"prefix": "ho", "region": "FR"}, headers=keys["search"])
                search({"q": "hotel berlin", "region": "DE"})
            eventually(lambda: _assert(_shows(api, keys, events, len(served))), timeout=120)
            yield {"runtime": runtime, "api": api, "keys": keys, "events": events, "found": found,
                   "served": len(served)}


async def _send_broken(settings: Settings) -> None:
    async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix, settings.partitions) as producer:
        for raw in BROKEN_RECORDS:
            await producer.send_raw(producer.topic_for("click"), raw, b"broken")


def _assert(condition: bool) -> None:
    assert condition


def sent_per_topic(events: list[dict[str, Any]], served: int) -> Counter[str]:
    sent = Counter(f"{PREFIX}events.{e['type']}" for e in events)
    sent[f"{PREFIX}events.search"] += served  # the lists the API served, recorded as searches
    return sent


def _shows(api: httpx.Client, keys: dict[str, dict[str, str]], events: list[dict[str, Any]], served: int) -> bool:
    """Whether the console has taken in the fixture's requests: the served lists applied and counted per
    topic (the worker's statistics land after the features), both routes timed."""
    board = Dashboard.model_validate(api.get("/v1/dashboard", headers=keys["read"]).json())
    counted = {t: board.topics[t].events for t in board.topics}
    return (board.applied == len(events) + served and sent_per_topic(events, served).items() <= counted.items()
            and {"/v1/search", "/v1/suggest"} <= set(board.latency))


def test_the_dashboard_document_holds_the_replay_s_figures(stack) -> None:
    answer = stack["api"].get("/v1/dashboard", headers=stack["keys"]["read"])
    assert answer.status_code == 200, answer.text
    board = Dashboard.model_validate(answer.json())
    sent = sent_per_topic(stack["events"], stack["served"])
    assert {t: board.topics[t].events for t in sent} == dict(sent)
    assert board.applied == len(stack["events"]) + stack["served"] and board.dead_letters.total == len(BROKEN_RECORDS)
    assert any(g.reason.startswith("malformed JSON") and g.samples == ["{this is not json"]
               for g in board.dead_letters.groups)
    assert {(a.region, a.metric) for a in board.alerts if a.metric == "ctr"} >= {("FR", "ctr")}
    assert board.models.published >= 2 and board.models.live_mrr
    assert {"features", "suggestions", "regions"} <= set(board.processors)
    assert {"/v1/search", "/v1/suggest"} <= set(board.latency)
    assert max(s.rates.get(f"{PREFIX}events.search", 0) for s in board.series) > 0
    france, germany = board.search["FR"], board.search["DE"]
    assert france.top[0].query == "hotel" and 0.2 < france.top[0].ctr < 0.4
    assert germany.no_result[0].query == "xyzzy" and germany.no_result[0].no_result > 19
    assert [r["item_id"] for r in stack["found"]["results"]] and "h3" not in {
        r["item_id"] for r in stack["found"]["results"]}  # deleted through the API


@contextmanager
def browser(chromium: str, base_url: str) -> Iterator[tuple[Any, list[str]]]:
    """A page in headless Chromium that may load only from ``base_url`` (everything else is refused
    and listed): what a machine without internet would see."""
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = chrome.new_page(viewport={"width": 1440, "height": 1000})

            def only_here(route: Any) -> None:
                if route.request.url.startswith(base_url) or route.request.url.startswith("data:"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()
            page.route("**/*", only_here)
            yield page, outside
        finally:
            chrome.close()


def test_every_panel_shows_the_replay_in_a_browser(stack, chromium, tmp_path) -> None:
    from playwright.sync_api import expect

    runtime, events = stack["runtime"], stack["events"]
    sent = Counter(e["type"] for e in events)
    sent["search"] += stack["served"]
    with browser(chromium, runtime.api_url) as (page, outside):
        page.goto(f"{runtime.api_url}/dashboard#key={stack['keys']['read']['X-API-Key']}")
        expect(page.locator("#panels")).to_be_visible(timeout=30_000)
        ingest = page.locator("#panel-ingest")
        for kind, n in sent.items():
            expect(ingest.locator(f'tr[data-topic="{PREFIX}events.{kind}"] td').nth(1)).to_have_text(f"{n:,}")
        expect(ingest.locator(".summary")).to_contain_text(f"{len(events) + stack['served']:,} applied to features")
        expect(ingest.locator(".chart svg path")).not_to_have_count(0)
        expect(page.locator("#panel-lag .chart svg")).to_be_visible()
        expect(page.locator("#panel-freshness .summary")).to_contain_text("p99")
        expect(page.locator("#panel-processors tr[data-processor=features]")).to_be_visible()
        dlq = page.locator("#panel-dlq")
        expect(dlq.locator(".summary")).to_contain_text(f"{len(BROKEN_RECORDS)} dead letters")
        expect(dlq.locator("code", has_text="{this is not json")).to_be_visible()
        alerts = page.locator("#panel-alerts")
        expect(alerts.locator('tr[data-region="FR"][data-metric="ctr"]').first).to_be_visible()
        expect(alerts.locator(".timeline svg rect").first).to_be_visible()
        models = page.locator("#panel-models")
        expect(models.locator(".summary")).to_contain_text("versions published")
        expect(models.locator("tbody tr[data-window]").first).to_be_visible()
        latency = page.locator("#panel-latency")
        for route in ("/v1/search", "/v1/suggest"):
            expect(latency.locator(f'tr[data-route="{route}"]')).to_be_visible()
        search = page.locator("#panel-search")
        expect(search.locator('table[data-list="top"] tr[data-query="hotel"]')).to_be_visible()
        page.select_option("#region-select", "DE")
        expect(search.locator('table[data-list="no_result"] tr[data-query="xyzzy"]')).to_be_visible()
        expect(search.locator('table[data-list="top"] tr[data-query="kaffee"]')).to_be_visible()
        page.select_option("#region-select", "FR")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "dashboard.png")
    assert outside == []


def test_every_series_the_grafana_dashboard_draws_is_on_metrics(stack) -> None:
    text = stack["api"].get("/metrics").text
    families = set(re.findall(r"^# TYPE (\S+) (\w+)", text, re.M))
    exposed = {name.removesuffix("_total") + suffix for name, kind in families  # TYPE may drop "_total"
               for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))}
    wanted = grafana_series()
    assert wanted and wanted <= exposed, wanted - exposed


def test_the_docs_render_offline_in_a_browser(stack, chromium, tmp_path) -> None:
    from playwright.sync_api import expect

    base = stack["runtime"].api_url
    with browser(chromium, base) as (page, outside):
        page.goto(f"{base}/docs")
        expect(page.locator(".opblock-summary-path", has_text="/v1/catalog/items").first).to_be_visible(timeout=30_000)
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Relevo")
        page.screenshot(path=str(tmp_path / "docs.png"))
        page.goto(f"{base}/redoc")
        expect(page.get_by_text("Add or replace items").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "redoc.png"))
    assert outside == []
