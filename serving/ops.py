"""Operations endpoints: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

``/metrics`` shows the workers' statistics from Redis (the sum over every worker, so every
API replica reports the same totals: aggregate replicas with ``max``, not ``sum``), drift
alerts raised and open per region and metric, the model version this replica serves, and
this replica's HTTP requests and their latency per route.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from relevo.core.stats import FRESHNESS_BUCKETS_MS, read_stats
from relevo.serving.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


async def _probe(check: Awaitable[object], timeout_s: float) -> str:
    """``ok``, or why not; never longer than ``timeout_s`` (a frozen Redis must not hang /readyz)."""
    try:
        await asyncio.wait_for(check, timeout_s)
        return "ok"
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except Exception as exc:  # any failure means not ready; say which
        return f"unavailable: {type(exc).__name__}: {exc}"[:300]


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request, response: Response) -> dict[str, Any]:
    """Ready when Redis and the broker answer within ``RELEVO_READY_TIMEOUT_S`` and every follower
    task runs; ``info`` adds what degrades answers without making the API unready (no model yet:
    first-stage ranking; catalog loading: search answers 503)."""
    state = request.app.state
    timeout = state.settings.ready_timeout_s
    ingest = state.ingest
    redis_check, broker_check = await asyncio.gather(
        _probe(state.redis.ping(), timeout),
        _probe(ingest.check(), timeout) if ingest.ready else _done("connecting"))
    checks: dict[str, str] = {"redis": redis_check, "broker": broker_check}
    for name, status in state.followers.status().items():
        checks[f"follower {name}"] = "ok" if status.running else \
            f"restarting after {status.restarts} failure(s): {status.last_error}"
    serving = state.models.version
    info = {"model": f"v{serving}" if serving is not None else "none yet: first-stage ranking only",
            "search": "ready" if state.search is not None else "loading the catalog"}
    ready = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ready else 503
    return {"ready": ready, "checks": checks, "info": info}


async def _done(value: str) -> str:
    return value


class StatsCollector(Collector):
    """Exposes the worker statistics (kept in Redis), drift alerts and the serving model as Prometheus metrics."""

    def __init__(self, stats: dict[str, Any], lag: dict[str, int], alerts: list[Any], model: int | None) -> None:
        self.counters, self.lag, self.alerts, self.model = stats["counters"], lag, alerts, model

    def collect(self):  # type: ignore[no-untyped-def]
        consumed = CounterMetricFamily("relevo_events_consumed", "valid events consumed", labels=["topic"])
        records = CounterMetricFamily("relevo_records_consumed", "Kafka records consumed", labels=["topic"])
        dlq = CounterMetricFamily("relevo_dlq_events", "events sent to the dead-letter topic",
                                  labels=["reason"])
        seconds = CounterMetricFamily("relevo_processor_seconds", "time each batch processor of the workers "
                                      "spent, retries included", labels=["processor"])
        batches = CounterMetricFamily("relevo_processor_batches", "batches each processor of the workers took",
                                      labels=["processor"])
        for field, value in self.counters.items():
            kind, _, label = field.partition(":")
            family = {"events": consumed, "records": records, "dlq": dlq, "seconds": seconds,
                      "batches": batches}.get(kind)
            if family is not None:
                family.add_metric([label], value)
        applied = CounterMetricFamily("relevo_feature_events_applied", "events applied to features")
        applied.add_metric([], self.counters.get("events_applied", 0.0))
        duplicates = CounterMetricFamily("relevo_duplicate_events", "redelivered or repeated event ids skipped")
        duplicates.add_metric([], self.counters.get("events_duplicate", 0.0))
        lag = GaugeMetricFamily("relevo_consumer_lag", "records waiting for the worker group", labels=["topic"])
        for topic, value in self.lag.items():
            lag.add_metric([topic], value)
        drift = GaugeMetricFamily("relevo_drift_alerts_open", "drift alerts open now",
                                  labels=["region", "metric", "severity"])
        open_alerts: Counter[tuple[str, str, str]] = Counter(
            (a.region, a.metric, a.severity) for a in self.alerts if not a.resolved)
        for labels, n in open_alerts.items():
            drift.add_metric(list(labels), n)
        raised = CounterMetricFamily("relevo_drift_alerts_raised", "drift alerts raised (of the newest "
                                     f"{ALERTS_COUNTED} kept)", labels=["region", "metric"])
        for labels, n in Counter((a.region, a.metric) for a in self.alerts).items():
            raised.add_metric(list(labels), n)
        model = GaugeMetricFamily("relevo_model_serving_version", "the model version this replica serves "
                                  "(0: none yet, first-stage ranking only)")
        model.add_metric([], self.model or 0)
        yield from (consumed, records, dlq, seconds, batches, applied, duplicates, lag, drift, raised, model,
                    self._freshness())

    def _freshness(self) -> HistogramMetricFamily:
        cumulative, buckets = 0.0, []
        for bound in FRESHNESS_BUCKETS_MS:
            cumulative += self.counters.get(f"fresh_le_{bound}", 0.0)
            buckets.append((str(bound / 1000), cumulative))
        cumulative += self.counters.get("fresh_le_inf", 0.0)
        buckets.append(("+Inf", cumulative))
        family = HistogramMetricFamily("relevo_feature_freshness_seconds",
                                       "record produced to features written")
        family.add_metric([], buckets, self.counters.get("fresh_sum_ms", 0.0) / 1000)
        return family


ALERTS_COUNTED = 10_000  # what the alert store keeps


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}},
                                                               "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics (no key)."""
    state = request.app.state
    registry = CollectorRegistry()
    alerts = await state.alerts.query(limit=ALERTS_COUNTED)
    registry.register(StatsCollector(await read_stats(state.redis, state.keys), state.lag.latest, alerts,
                                     state.models.version))
    body = generate_latest(registry) + generate_latest(state.http_metrics)
    return Response(body, media_type="text/plain; version=0.0.4")
