"""Where alerts go: the Redis alert store behind the API, a topic, Prometheus counters, a webhook.

A sink has ``async send(alert)`` and ``async close()``. Sinks hear about new
alerts and recoveries; the store also keeps every refresh, so the API shows the
latest ``last_seen``. No sink may block the stream: the webhook posts from a
background task fed by a bounded queue and drops (and counts) what overflows.

>>> import asyncio
>>> sent = []
>>> async def send(data: bytes) -> None:
...     sent.append(data)
>>> alert = Alert("a1", "FR", "ctr", "ADWIN", -0.3, 0.9, 0.6, 100, "warning", 1, 2)
>>> asyncio.run(TopicSink(send).send(alert))
>>> orjson.loads(sent[0])["metric"]
'ctr'
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx
import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter

from relevo.core.keys import Keys
from relevo.drift.alerts import Alert

log = logging.getLogger(__name__)

ALERTS = Counter("relevo_drift_alerts", "Drift alerts raised", ["region", "metric", "severity"])
RECOVERIES = Counter("relevo_drift_recoveries", "Drift alerts resolved", ["region", "metric"])
WEBHOOK_FAILURES = Counter("relevo_drift_webhook_failures", "Alerts the webhook gave up on or dropped")


class Sink(Protocol):
    async def send(self, alert: Alert) -> None:
        """Deliver one new or resolved alert; must return quickly."""

    async def close(self) -> None:
        """Flush what is pending and release resources."""


class AlertStore:
    """Alerts in Redis: one hash of id -> JSON, and an index by ``first_seen``."""

    def __init__(self, client: aioredis.Redis, keys: Keys | None = None, max_alerts: int = 10_000) -> None:
        keys = keys or Keys()
        self.client = client
        self.max_alerts = max_alerts
        self._data = keys.entity("drift", "alerts", "data")
        self._index = keys.entity("drift", "alerts", "by_first_seen")

    async def save(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self._data, mapping={a.id: orjson.dumps(a.to_dict()) for a in alerts})
            pipe.zadd(self._index, {a.id: a.first_seen for a in alerts})
            pipe.zrange(self._index, 0, -self.max_alerts - 1)  # the oldest beyond the cap
            stale = (await pipe.execute())[-1]
        if stale:
            async with self.client.pipeline(transaction=False) as pipe:
                await pipe.zrem(self._index, *stale).hdel(self._data, *stale).execute()

    async def query(self, region: str | None = None, metric: str | None = None, since: int | None = None,
              until: int | None = None, active_only: bool = False, limit: int = 100) -> list[Alert]:
        """Alerts that were open at some time in [since, until], newest first."""
        ids = await self.client.zrevrangebyscore(self._index, "+inf" if until is None else until, "-inf")
        found: list[Alert] = []
        for raw in await self.client.hmget(self._data, ids) if ids else []:
            if raw is None:
                continue
            alert = Alert.from_dict(orjson.loads(raw))
            if ((region is None or alert.region == region) and (metric is None or alert.metric == metric)
                    and (since is None or alert.last_seen >= since) and not (active_only and alert.resolved)):
                found.append(alert)
                if len(found) >= limit:
                    break
        return found


class ListSink:
    """Keeps every alert it hears in ``alerts``: for tests, benchmarks and embedding."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    async def close(self) -> None:
        return None


class TopicSink:
    """Alerts as JSON records through an injected ``send(bytes)``, e.g. a producer on ``relevo.drift.alerts``."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._send = send

    async def send(self, alert: Alert) -> None:
        await self._send(orjson.dumps(alert.to_dict()))

    async def close(self) -> None:
        return None


class MetricsSink:
    """Prometheus counters of alerts raised and resolved, per region, metric and severity."""

    async def send(self, alert: Alert) -> None:
        if alert.resolved:
            RECOVERIES.labels(alert.region, alert.metric).inc()
        else:
            ALERTS.labels(alert.region, alert.metric, alert.severity).inc()

    async def close(self) -> None:
        return None


class WebhookSink:
    """POSTs each alert as JSON to ``url`` from a background task, with retries and a timeout.

    ``send`` only enqueues. A post that fails is retried ``retries`` times with
    exponential backoff from ``backoff_s``, then given up (logged and counted).
    When the queue is full the alert is dropped, never waited for.
    """

    def __init__(self, url: str, timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.5,
                 queue_size: int = 1000) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.delivered = 0
        self.failed = 0
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue_size)
        self._worker: asyncio.Task[None] | None = None

    async def send(self, alert: Alert) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="drift-webhook")
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._give_up(alert, "queue full")

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while True:
                alert = await self._queue.get()
                try:
                    await self._post(client, alert)
                finally:
                    self._queue.task_done()

    async def _post(self, client: httpx.AsyncClient, alert: Alert) -> None:
        body = orjson.dumps(alert.to_dict())
        for attempt in range(self.retries + 1):
            try:
                response = await client.post(self.url, content=body,
                                             headers={"content-type": "application/json"})
                if response.status_code < 300:
                    self.delivered += 1
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(self.backoff_s * 2 ** attempt)
        self._give_up(alert, reason)

    def _give_up(self, alert: Alert, reason: str) -> None:
        self.failed += 1
        WEBHOOK_FAILURES.inc()
        log.warning("webhook %s: gave up on alert %s (%s/%s): %s", self.url, alert.id, alert.region,
                    alert.metric, reason)

    async def close(self, drain_s: float = 5.0) -> None:
        """Give pending posts up to ``drain_s`` seconds, then stop."""
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), drain_s)
        except TimeoutError:
            log.warning("webhook %s: %d alerts undelivered at shutdown", self.url, self._queue.qsize())
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = None
