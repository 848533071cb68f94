"""The operator's console: ``GET /dashboard`` and the one document it shows, ``GET /v1/dashboard``.

The page (``serving/static``: HTML, CSS and script, nothing from a CDN) asks for a read
key once (or takes it from the URL fragment, ``/dashboard#key=…``, which never reaches
a server log), then polls ``/v1/dashboard`` every few seconds and draws every panel from
it: ingest rate per topic, consumer lag, feature freshness p50/p99, processor timings,
dead letters by reason with samples, drift alerts on a timeline, model versions with the
live MRR beside the session rule, API latency per route, and search analytics per region.

Counters are totals (kept in Redis by the workers); what changes over time comes from a
``History`` each API replica samples every ``SAMPLE_S`` seconds for the last hour: rates
from counter differences, freshness and latency percentiles from histogram-bucket
differences (``bucket_quantile``), lag as ``LagMonitor`` last saw it. Prometheus and the
Grafana dashboard in ``deploy/`` keep longer histories of the same series.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from relevo.core.settings import Settings
from relevo.core.stats import FRESHNESS_BUCKETS_MS, bucket_quantile, read_stats
from relevo.models.live_mrr import windows
from relevo.search.analytics import read_analytics
from relevo.serving.auth import READ
from relevo.serving.schemas import ERRORS, AlertOut
from relevo.streams.dlq import Summary
from relevo.streams.follow import follow_dead_letters

STATIC = Path(__file__).parent / "static"
SAMPLE_S = 2.0
KEEP = 1800  # samples: an hour at SAMPLE_S
ASSETS = ("dashboard.js", "dashboard.css")
# Everything the page loads comes from this server: a CDN could not be reached offline anyway.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:", "Cache-Control": "no-cache"}

router = APIRouter(tags=["console"])


# --- what the page shows -------------------------------------------------------------------------------------

class Latency(BaseModel):
    p50_ms: float | None
    p99_ms: float | None
    per_s: float = Field(description="requests per second (in a sample), or requests in all (in the totals)")


class Sample(BaseModel):
    t: int = Field(description="wall clock, epoch ms")
    rates: dict[str, float] = Field(description="events per second, per topic")
    lag: dict[str, int]
    freshness_p50_ms: float | None
    freshness_p99_ms: float | None
    latency: dict[str, Latency] = Field(description="per route, over this sample's interval")


class Topic(BaseModel):
    events: int
    records: int
    lag: int


class Processor(BaseModel):
    batches: int
    seconds: float
    mean_ms: float | None


class LetterGroup(BaseModel):
    reason: str = Field(description="with what senders wrote masked: letters of one cause share it")
    count: int
    sources: dict[str, int]
    first_ms: int
    last_ms: int
    samples: list[str]


class DeadLetters(BaseModel):
    total: int
    groups: list[LetterGroup]


class VersionFigures(BaseModel):
    version: int
    created: float
    lists: int
    model_mrr: float | None
    rule_mrr: float | None


class MrrWindow(BaseModel):
    first: int
    last: int
    clickouts: int
    model_mrr: float
    rule_mrr: float
    lift: float


class Models(BaseModel):
    serving: int | None
    published: int
    versions: list[VersionFigures] = Field(description="the newest 50, newest first")
    live_mrr: list[MrrWindow] = Field(description="consecutive versions in windows of about equal clickouts")


class SearchFigures(BaseModel):
    """Decayed counts (event time, the region's half-life)."""

    searches: float
    no_result: float = Field(description="searches that showed no result")
    clicked: float = Field(description="searches followed by a click, cart or purchase")
    no_click: float = Field(description="searches with results that nobody clicked")
    ctr: float | None = Field(description="clicked per search whose outcome is known")


class QueryStats(SearchFigures):
    query: str = Field(description="normalised")


class RegionSearch(BaseModel):
    region: str
    as_of: int = Field(description="the region's latest event time, epoch ms")
    half_life_s: float
    totals: SearchFigures = Field(description="every search of the region, browsing included")
    top: list[QueryStats] = Field(description="by searches")
    no_result: list[QueryStats] = Field(description="by searches with no result")
    no_click: list[QueryStats] = Field(description="by searches with no click")


class Dashboard(BaseModel):
    as_of: int = Field(description="wall clock, epoch ms")
    stream_clock: int = Field(description="the event time every source has reached, epoch ms")
    sample_s: float
    topics: dict[str, Topic]
    applied: int
    duplicates: int
    freshness_p50_ms: float | None
    freshness_p99_ms: float | None
    processors: dict[str, Processor]
    latency: dict[str, Latency] = Field(description="per route, since this replica started")
    series: list[Sample]
    dead_letters: DeadLetters
    alerts: list[AlertOut] = Field(description="the newest 500")
    models: Models
    search: dict[str, RegionSearch] = Field(description="search analytics per region")


# --- what changes over time ----------------------------------------------------------------------------------

def histograms(registry: CollectorRegistry, name: str, label: str) -> dict[str, tuple[list[float], list[float]]]:
    """Each ``label`` value's histogram ``name`` in ``registry``: (bounds, count per bucket), the
    last count past every bound; summed over the other labels."""
    cumulative: dict[str, dict[float, float]] = {}
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                by_le = cumulative.setdefault(sample.labels[label], {})
                by_le[le] = by_le.get(le, 0.0) + sample.value
    found = {}
    for key, by_le in cumulative.items():
        bounds = sorted(by_le)
        cumulative_counts = [by_le[b] for b in bounds]
        counts = [n - m for n, m in zip(cumulative_counts, [0.0, *cumulative_counts], strict=False)]
        found[key] = ([b for b in bounds if math.isfinite(b)], counts)
    return found


def _quantiles(bounds: list[float], counts: list[float], scale: float) -> tuple[float | None, float | None]:
    return tuple(None if math.isnan(v := bucket_quantile(q, bounds, counts)) else round(v * scale, 3)
                 for q in (0.5, 0.99))  # type: ignore[return-value]


def _freshness(counters: Mapping[str, float]) -> list[float]:
    return [counters.get(f"fresh_le_{b}", 0.0) for b in FRESHNESS_BUCKETS_MS] + [counters.get("fresh_le_inf", 0.0)]


def _prefixed(counters: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)}


HTTP_LATENCY = "http_request_duration_seconds"
IGNORED_ROUTES = ("/metrics", "/v1/dashboard", "/dashboard", "/dashboard/{asset}")


def latencies(http: CollectorRegistry) -> dict[str, tuple[list[float], list[float]]]:
    return {route: h for route, h in histograms(http, HTTP_LATENCY, "handler").items() if route not in IGNORED_ROUTES}


class History:
    """This replica's samples of the moving figures, the newest last (see the module doc)."""

    def __init__(self, read_counters: Callable[[], Any], lag: Callable[[], Mapping[str, int]],
                 http: CollectorRegistry, every_s: float = SAMPLE_S, keep: int = KEEP) -> None:
        self.read_counters, self.lag, self.http, self.every_s = read_counters, lag, http, every_s
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.dead_letters = Summary(samples=3)
        self._last: tuple[float, Mapping[str, float], dict[str, tuple[list[float], list[float]]]] | None = None

    async def follow_dead_letters(self, settings: Settings, stop: asyncio.Event) -> None:
        """Keep ``dead_letters`` current; a restart reads the topic from its start again, afresh."""
        self.dead_letters = Summary(samples=3)
        await follow_dead_letters(settings, self.dead_letters.add, stop)

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.every_s)

    async def sample(self) -> None:
        now, counters, http = time.time(), await self.read_counters(), latencies(self.http)
        if self._last is not None:
            self.samples.append(self._difference(now, counters, http))
        self._last = now, counters, http

    def _difference(self, now: float, counters: Mapping[str, float],
                    http: dict[str, tuple[list[float], list[float]]]) -> Sample:
        then, before, http_before = self._last  # type: ignore[misc]
        elapsed = max(now - then, 1e-6)
        events, events_before = _prefixed(counters, "events:"), _prefixed(before, "events:")
        fresh = [a - b for a, b in zip(_freshness(counters), _freshness(before), strict=True)]
        p50, p99 = _quantiles(list(FRESHNESS_BUCKETS_MS), fresh, 1.0)
        latency = {}
        for route, (bounds, counts) in http.items():
            earlier = http_before.get(route, (bounds, [0.0] * len(counts)))[1]
            delta = [a - b for a, b in zip(counts, earlier, strict=False)]
            if sum(delta) > 0:
                latency[route] = Latency(**dict(zip(("p50_ms", "p99_ms"), _quantiles(bounds, delta, 1000.0),
                                                    strict=True)), per_s=round(sum(delta) / elapsed, 2))
        return Sample(t=int(now * 1000), lag=dict(self.lag()), freshness_p50_ms=p50, freshness_p99_ms=p99,
                      rates={t: round((n - events_before.get(t, 0.0)) / elapsed, 2) for t, n in events.items()},
                      latency=latency)

    def recent(self, minutes: int) -> list[Sample]:
        since = (time.time() - minutes * 60) * 1000
        return [s for s in self.samples if s.t >= since]


# --- routes -------------------------------------------------------------------------------------------------

@router.get("/dashboard", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", headers=PAGE_HEADERS)


@router.get("/dashboard/{asset}", include_in_schema=False)
async def asset(asset: Literal[ASSETS]) -> FileResponse:  # type: ignore[valid-type]
    return FileResponse(STATIC / asset, headers=PAGE_HEADERS)


def _models(live: Any) -> dict[str, Any]:
    versions = live.registry.versions()
    figures = [{"version": v.version, "created": v.created, "lists": int(v.figures.get("prequential_lists", 0)),
                "model_mrr": v.figures.get("prequential_mrr"),
                "rule_mrr": v.figures.get("prequential_session_rule_mrr")} for v in reversed(versions[-50:])]
    return {"serving": live.version, "published": len(versions), "versions": figures,
            "live_mrr": [{**w.__dict__, "lift": w.lift} for w in windows(versions, count=12)] if versions else []}


@router.get("/v1/dashboard", dependencies=[READ], response_model=Dashboard, responses=ERRORS)
async def dashboard(request: Request, minutes: int = Query(15, ge=1, le=60, description="history to return")
                    ) -> dict[str, Any]:
    """Everything the console shows, in one document (read key)."""
    state = request.app.state
    history: History = state.console
    stats, alerts, analytics, models, clock = await asyncio.gather(
        read_stats(state.redis, state.keys), state.alerts.query(limit=500),
        read_analytics(state.redis, state.keys, state.settings.partitions),
        asyncio.to_thread(_models, state.models), state.store.clock())
    counters, lag = stats["counters"], state.lag.latest
    events, records = _prefixed(counters, "events:"), _prefixed(counters, "records:")
    seconds, batches = _prefixed(counters, "seconds:"), _prefixed(counters, "batches:")
    letters = history.dead_letters
    latency = {}
    for route, (bounds, counts) in latencies(history.http).items():
        p50, p99 = _quantiles(bounds, counts, 1000.0)
        latency[route] = {"p50_ms": p50, "p99_ms": p99, "per_s": sum(counts)}
    return {
        "as_of": int(time.time() * 1000), "stream_clock": clock, "sample_s": history.every_s,
        "topics": {t: {"events": int(events.get(t, 0)), "records": int(records.get(t, 0)), "lag": int(lag.get(t, 0))}
                   for t in sorted({*events, *records, *lag})},
        "applied": int(counters.get("events_applied", 0)), "duplicates": int(counters.get("events_duplicate", 0)),
        "freshness_p50_ms": _finite(stats["freshness_ms"]["p50"]),
        "freshness_p99_ms": _finite(stats["freshness_ms"]["p99"]),
        "processors": {name: {"batches": int(batches.get(name, 0)), "seconds": round(spent, 3),
                              "mean_ms": round(spent * 1000 / batches[name], 3) if batches.get(name) else None}
                       for name, spent in sorted(seconds.items())},
        "latency": latency,
        "series": history.recent(minutes),
        "dead_letters": {"total": letters.total, "groups": [
            {"reason": g.reason, "count": g.count, "sources": dict(g.sources), "first_ms": g.first_ms,
             "last_ms": g.last_ms, "samples": [s.decode("utf-8", "replace") for s in g.samples]}
            for g in letters.groups()[:20]]},
        "alerts": [a.to_dict() for a in alerts],
        "models": models,
        "search": analytics,
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)
