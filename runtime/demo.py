"""``relevo demo``: the whole system on real data, then a summary of what it did.

Starts the embedded stack, a worker and the API; replays the Trivago slice into
Kafka (plus a handful of deliberately broken records, to show the dead-letter
path); waits for the worker to catch up; and prints what was ingested, what was
rejected and why, processing lag, feature freshness, and the live features of
the busiest user and region, read over the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import time
from collections import Counter
from typing import Any

import httpx

from relevo.core.redis import connect
from relevo.core.settings import SHARED_DATA, Settings
from relevo.core.stats import read_stats
from relevo.runtime.processes import Runtime, first_key, servers_dir, stack_file
from relevo.streams.datasets import open_dataset
from relevo.streams.lag import consumer_lag
from relevo.streams.producer import EventProducer
from relevo.streams.replay import replay

log = logging.getLogger(__name__)

AMAZON_TITLES = SHARED_DATA / "amazon_multilingual" / "product_titles_by_market.tsv"
# Queries in five languages against titles that are mostly English (and German, French, Japanese).
DEMO_SEARCHES = [("レゴ フォルクスワーゲン キャンパー", "US", "ja-JP"), ("乐高 火车 轨道", "US", "zh-CN"),
                 ("Studiokopfhörer Sony", "DE", "de-DE"), ("livre de cuisine Harry Potter", "FR", "fr-FR"),
                 ("auriculares profesionales", "US", "es-MX")]
SUGGEST_PREFIXES = [("p", "BR"), ("ma", "BR"), ("new", "US"), ("ber", "DE"), ("to", "JP")]

BROKEN_RECORDS = [  # what a misbehaving shop sends: each must land in the DLQ with its reason
    b"{this is not json",
    b'{"event_id": "bad-1", "ts": 1541599523000, "user_id": "u", "session_id": "s", "region": "FR"}',
    b'{"event_id": "bad-2", "ts": 99999999999999, "user_id": "u", "session_id": "s", "region": "FR",'
    b' "item_id": "1"}',
    b'{"event_id": "bad-3", "ts": "yesterday", "user_id": "u", "session_id": "s", "region": "FR",'
    b' "item_id": "1"}',
    b'[{"event_id": "bad-4", "ts": 1541599523000, "user_id": "' + b"x" * 300 + b'", "session_id": "s",'
    b' "region": "FR", "item_id": "1"}]',
]


def run_demo(settings: Settings, limit: int | None = None, speed: float | None = None,
             keep_running: bool = False, inject_drift: str | None = None) -> int:
    settings = Settings(**{**settings.__dict__, "api_port": 0}) if settings.api_port == 8000 else settings
    if not settings.registry_dir:  # each demo learns from scratch: a model that saw this slice before would flatter it
        demo_models = settings.data_dir / "demo-models"
        shutil.rmtree(demo_models, ignore_errors=True)
        # ... and keeps every version: the live MRR reads each one's figures.
        settings = Settings(**{**settings.__dict__, "registry_dir": str(demo_models), "registry_keep": 0})
    if settings.embedded_kafka and settings.embedded_redis:
        # The embedded broker starts empty every time; the last demo's durable Redis would keep its
        # features, claimed event ids and region snapshots (offsets in a log that is gone), and this
        # run would skip its events as duplicates and learn nothing.
        shutil.rmtree(servers_dir(settings), ignore_errors=True)
    load_catalog(settings)
    with Runtime(settings, workers=1, trainer=True) as runtime:
        log.info("stack up: API %s; waiting for the worker to join its group", runtime.api_url)
        runtime.wait_workers_ready()
        events = list(open_dataset("trivago"))[:limit]
        if inject_drift:
            events = with_drift(events, inject_drift)
        busiest_user = Counter(e["user_id"] for e in events).most_common(1)[0][0]
        busiest_region = Counter(e["region"] for e in events).most_common(1)[0][0]
        started, started_at = time.monotonic(), time.time()
        sent = asyncio.run(_send(runtime.settings, events, speed))
        log.info("replayed %d events in %.1fs; waiting for the worker to apply them", len(events),
                 time.monotonic() - started)
        summary = asyncio.run(_wait_and_summarise(runtime, len(events), sent))
        runtime.wait_drained()  # the region and global stages have applied everything: drift and examples final
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        summary["models"] = _models(runtime.settings, started_at)
        read_key = {"X-API-Key": first_key(runtime.settings, "read")}
        with httpx.Client(base_url=runtime.api_url, timeout=5, headers=read_key) as api:
            summary["busiest_user"] = api.get(f"/v1/features/users/{busiest_user}").json()
            summary["busiest_region"] = api.get(f"/v1/features/regions/{busiest_region}").json()
            summary["searches"] = _searches(api)
            summary["suggestions"] = [
                (prefix, region, api.get("/v1/suggest", params={"prefix": prefix, "region": region, "k": 3}).json())
                for prefix, region in SUGGEST_PREFIXES]
            summary["alerts"] = api.get("/v1/alerts", params={"limit": 5}).json()["alerts"]
            if inject_drift:
                summary["alerts"] = api.get("/v1/alerts", params={"region": inject_drift}).json()["alerts"] + [
                    a for a in summary["alerts"] if a["region"] != inject_drift]
        sys.stdout.write(render(summary))
        if keep_running:
            log.info("still running: the console at %s/dashboard, the API docs at /docs (this run's keys in %s). "
                     "Ctrl-C stops everything.", runtime.api_url, stack_file(runtime.settings))
            runtime.wait_for_interrupt()
    return 0


def _models(settings: Settings, since: float) -> dict[str, Any]:
    """Once the trainer has caught up: the serving version and this run's live MRR windows
    (versions published since ``since``, epoch s: a configured registry outlives a demo run)."""
    from relevo.models.live_mrr import wait_until_quiet, windows
    from relevo.models.registry import Registry
    from relevo.models.trainer_worker import registry_dir

    registry = Registry(registry_dir(settings))
    versions = [v for v in wait_until_quiet(registry) if v.created >= since]
    return {"serving": registry.current(), "published": len(versions), "windows": windows(versions)}


def load_catalog(settings: Settings) -> None:
    """Index the Amazon multilingual sample (cached embeddings make later runs quick)."""
    from relevo.search.catalog import load_amazon
    from relevo.search.catalog_store import load_items

    if not AMAZON_TITLES.exists():
        log.warning("no Amazon catalog at %s: the demo runs without search", AMAZON_TITLES)
        return
    log.info("loading the Amazon multilingual catalog (encoding titles the first time takes about a minute)")
    load_items(settings.data_dir, load_amazon(AMAZON_TITLES), cache_dir=settings.cache_dir)


def _search_ready(api: httpx.Client) -> bool:
    try:
        return api.get("/v1/search", params={"q": "lego"}, timeout=30).status_code != 503
    except httpx.TimeoutException:  # a busy machine: the API is still loading, not broken
        return False


def _searches(api: httpx.Client, timeout_s: float = 300.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while not _search_ready(api) and time.monotonic() < deadline:
        time.sleep(1)  # the API loads the catalog and the taxonomy in the background
    return [api.get("/v1/search", params={"q": q, "region": r, "locale": loc, "k": 3}, timeout=30).json()
            for q, r, loc in DEMO_SEARCHES]


def with_drift(events: list[dict[str, Any]], region: str, fraction: float = 0.5) -> list[dict[str, Any]]:
    """Drop ``fraction`` of ``region``'s clicks from 40% of its events on: a click-through collapse."""
    from relevo.drift.inject import drop_clicks

    own = [e["ts"] for e in events if e["region"] == region]
    if not own:
        raise SystemExit(f"--inject-drift: no events in region {region!r}")
    start = own[int(len(own) * 0.4)]
    log.info("injecting drift: %.0f%% of %s's clicks dropped from ts %d on", fraction * 100, region, start)
    return list(drop_clicks(events, region, start, fraction))


async def _send(settings: Settings, events: list[dict[str, Any]], speed: float | None) -> Counter[str]:
    async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                             settings.partitions) as producer:
        stats = await replay(events, producer, speed=speed)
        for raw in BROKEN_RECORDS:
            await producer.send_raw(producer.topic_for("click"), raw, b"demo")
    return stats.sent


async def _wait_and_summarise(runtime: Runtime, n_events: int, sent: Counter[str],
                              timeout_s: float = 300.0) -> dict[str, Any]:

    from relevo.core.keys import Keys

    redis = connect(runtime.settings.redis_url)
    keys = Keys(runtime.settings.key_prefix)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            stats = await read_stats(redis, keys)
            done = stats["counters"].get("events_applied", 0) + stats["counters"].get("events_duplicate", 0)
            dlq = sum(v for k, v in stats["counters"].items() if k.startswith("dlq:"))
            if (done >= n_events and dlq >= len(BROKEN_RECORDS)) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        lag = await consumer_lag(runtime.settings)
        settle = time.monotonic() + 15  # offsets are committed every few seconds
        while sum(lag.values()) and time.monotonic() < settle:
            await asyncio.sleep(1)
            lag = await consumer_lag(runtime.settings)
    finally:
        await redis.aclose()
    counters = stats["counters"]
    return {
        "sent": dict(sent),
        "ingested": {k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith("events:")},
        "applied": int(counters.get("events_applied", 0)),
        "duplicates_skipped": int(counters.get("events_duplicate", 0)),
        "dead_letters": {k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith("dlq:")},
        "lag": lag,
        "freshness_ms": stats["freshness_ms"],
    }


def _top(scores: dict[str, float], n: int = 5) -> str:
    return " | ".join(f"{k} ({v:.2f})" for k, v in sorted(scores.items(), key=lambda kv: -kv[1])[:n]) or "-"


def render(s: dict[str, Any]) -> str:
    user, region = s["busiest_user"], s["busiest_region"]
    fresh = s["freshness_ms"]
    lines = [
        "",
        "Relevo demo — Trivago slice",
        "=" * 60,
        f"events sent            {json.dumps(s['sent'])}",
        f"events ingested        {json.dumps(s['ingested'])}",
        f"applied to features    {s['applied']} (duplicates skipped: {s['duplicates_skipped']})",
        f"dead-letter topic      {sum(s['dead_letters'].values())} records, by reason:",
        *(f"    {n:>4}  {reason}" for reason, n in s["dead_letters"].items()),
        f"consumer lag           {sum(s['lag'].values())} records",
        f"feature freshness      p50 {fresh['p50']:.1f} ms, p99 {fresh['p99']:.1f} ms "
        f"(produced -> written, {fresh['samples']} records)",
        f"wall time              {s['elapsed_s']} s",
        "",
        f"busiest user {user.get('user_id')}: region {user.get('region')}, locale {user.get('locale')}, "
        f"price band {user.get('price_band')}",
        f"    top items       {_top(user.get('items', {}))}",
        f"    session items   {', '.join(user.get('session_items', [])[:8]) or '-'}",
        f"    recent queries  {' | '.join(user.get('recent_queries', [])[:5]) or '-'}",
        f"region {region.get('region')}: CTR per search {region.get('ctr', 0):.3f}",
        f"    popular items   {_top(region.get('items', {}))}",
        f"    popular queries {_top(region.get('queries', {}))}",
        "",
        *_render_models(s["models"]),
        "",
        *_render_alerts(s["alerts"]),
        "",
        *_render_searches(s["searches"]),
        "",
        *_render_suggestions(s["suggestions"]),
        "",
    ]
    return "\n".join(lines)


def _render_models(models: dict[str, Any]) -> list[str]:
    if not models["published"]:
        return ["models: no version published yet (the trainer needs labelled examples)"]
    return [f"models: {models['published']} versions published during the replay, v{models['serving']} serving.",
            "Live MRR: each clickout ranked by the model serving at its time, before learning from it,",
            "beside the session rule (items the session touched first, most recent first) on the same clickouts:",
            *(f"    v{w.first}-v{w.last:<6} {w.clickouts:>6} clickouts  model {w.model_mrr:.3f}  "
              f"rule {w.rule_mrr:.3f}  lift {w.lift:+.3f}" for w in models["windows"])]


def _render_searches(searches: list[dict[str, Any]]) -> list[str]:
    lines = ["cross-lingual search (Amazon multilingual catalog):"]
    for answer in searches:
        if "results" not in answer:
            lines.append(f"    search unavailable: {answer.get('detail')}")
            continue
        lang = answer.get("understanding", {}).get("language", {}).get("code")
        lines.append(f"  {answer['query']!r} region {answer['region']} locale {answer['locale']} "
                     f"(language {lang}, {answer['took_ms']} ms)")
        for r in answer["results"]:
            why = ", ".join(f"{name} +{signal['contribution']:.2f}" for name, signal in r["explanation"].items()
                            if signal.get("contribution"))
            if learned := r["explanation"].get("learned"):
                why += f"; model v{learned['model_version']}, first stage #{learned['first_stage_position'] + 1}"
            lines.append(f"    {r['score']:.3f}  {r['title'][:70]}  [{why}]")
    return lines


def _render_suggestions(rows: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    lines = ["query suggestions (learned from the replay):"]
    for prefix, region, answer in rows:
        texts = " | ".join(s["text"] for s in answer.get("suggestions", [])) or "-"
        lines.append(f"    {region} {prefix!r:>6} -> {texts}")
    return lines


def _short(level: Any) -> str:
    if isinstance(level, dict):  # a mix: its three largest shares
        return ", ".join(f"{k} {v:.2f}" for k, v in sorted(level.items(), key=lambda kv: -kv[1])[:3])
    return f"{level:.3f}" if isinstance(level, float) else str(level)


def _render_alerts(alerts: list[dict[str, Any]]) -> list[str]:
    if not alerts:
        return ["drift alerts: none"]
    lines = ["drift alerts (with --inject-drift, that region's first; then the newest):"]
    for a in alerts:
        state = "resolved" if a.get("resolved") else a.get("severity", "open")
        lines.append(f"    {a['region']:>3} {a['metric']:<15} {a['detector']:<8} baseline {_short(a['baseline'])} "
                     f"-> current {_short(a['current'])} ({state})")
    return lines
