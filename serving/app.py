"""The HTTP API: one FastAPI app, its routers, and what they share (Redis, Kafka, settings).

Swagger UI (``/docs``) and ReDoc (``/redoc``) are served from the files the installed
``fastapi-offline`` package ships (Swagger UI, Apache-2.0; ReDoc, MIT), so they render on
a machine without internet. Every request is counted and timed per route by
``prometheus-fastapi-instrumentator`` into the app's own registry, which ``/metrics``
exposes beside the workers' statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relevo import __version__
from relevo.core.heap import tune_for_large_heaps
from relevo.core.keys import Keys
from relevo.core.redis import AnyRedis, connect
from relevo.core.settings import Settings
from relevo.core.stats import read_counters
from relevo.core.supervision import Supervisor
from relevo.drift.sinks import AlertStore
from relevo.features.online import OnlineStore
from relevo.models.examples import RegionContexts
from relevo.models.live import LiveModel
from relevo.models.registry import Registry
from relevo.models.rerank import LearnedReranker
from relevo.models.trainer_worker import registry_dir
from relevo.search.catalog_store import CatalogConsumer, build_search_service, catalog_dir, open_catalog, tuning_dir
from relevo.search.fusion import FUSION_FILE
from relevo.search.service import CONTEXT_REGION_FIELDS, CONTEXT_USER_FIELDS, FeatureSource, Reranker, SearchService
from relevo.search.taxonomy import TAXONOMY
from relevo.serving import alerts, catalog, console, features, ingest, models, ops, rank, search, suggest
from relevo.serving.schemas import body_components
from relevo.streams.events import Event
from relevo.streams.follow import follow_catalog, follow_updates
from relevo.streams.lag import consumer_lag
from relevo.streams.producer import EventProducer
from relevo.streams.regions import STAGE as REGIONS
from relevo.streams.regions import follow_regions, sources
from relevo.streams.stages import Snapshots
from relevo.streams.topics import DLQ
from relevo.suggestions.config import SuggestConfig
from relevo.suggestions.service import SuggestService

log = logging.getLogger(__name__)


class KafkaIngest:
    """Where accepted events and edge rejects go: the event topics and the dead-letter topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix, settings.partitions)
        self.ready = False

    async def start(self) -> None:
        await self.producer.start()
        self.ready = True

    async def send(self, events: Iterable[Event], rejects: Sequence[tuple[bytes, str]] = ()) -> None:
        """Produce ``events`` and dead-letter ``rejects`` (bytes, reason) together; return once all are acknowledged."""
        await asyncio.gather(self.producer.send(events),
                             self.producer.send_dead_letters(self.settings.topic(DLQ), rejects, "api"))

    async def dead_letter(self, raw: bytes, reason: str) -> None:
        await self.send((), [(raw, reason)])

    async def check(self) -> None:
        """Raise unless the broker answers a metadata request."""
        if not await self.producer.producer.client.fetch_all_metadata():
            raise ConnectionError("no metadata from the broker")

    async def stop(self) -> None:
        self.ready = False
        await self.producer.stop()


class LagMonitor:
    """Consumer lag refreshed in the background, so ``/metrics`` never waits on Kafka."""

    def __init__(self, settings: Settings, every_s: float = 5.0) -> None:
        self.settings, self.every_s, self.latest = settings, every_s, {}

    async def run(self) -> None:
        while True:
            try:
                self.latest = await consumer_lag(self.settings)
            except Exception as exc:  # lag is advisory: log and keep serving
                log.debug("consumer lag unavailable: %s", exc)
            await asyncio.sleep(self.every_s)


def load_search(settings: Settings, features: FeatureSource | None = None, reranker: Reranker | None = None,
                taxonomy: Path = TAXONOMY, executor: Executor | None = None) -> SearchService:
    """The search service over the catalog under the data dir, scored by the search tuning
    published there (and its query tower), else by the prior fusion, searching in ``executor``'s
    threads. Blocking: tens of seconds."""
    catalog = open_catalog(settings.data_dir, cache_dir=settings.cache_dir)
    published = tuning_dir(settings.data_dir)
    fusion = None
    if (published / FUSION_FILE).exists():  # transformers (~10 s to import) only for a published tower
        from relevo.models.query_tuning import attach_published

        fusion = attach_published(catalog, published, settings.cache_dir)
    return build_search_service(catalog, features, reranker, taxonomy, fusion=fusion, executor=executor)


async def open_search(app: FastAPI, settings: Settings, stop: asyncio.Event) -> None:
    """Load the catalog and the encoder (tens of seconds the first time), then follow ``catalog.items``."""
    state = app.state

    async def features(user_id: str | None, region: str | None) -> tuple[dict | None, dict | None]:
        users, regions, _ = await state.store.many([user_id] if user_id else [], [region] if region else [], [],
                                                   user_fields=CONTEXT_USER_FIELDS, region_fields=CONTEXT_REGION_FIELDS)
        return (users or [None])[0], (regions or [None])[0]

    if state.search is None:  # a restarted follower keeps the catalog it loaded
        reranker = (LearnedReranker(state.models, state.contexts.for_region, settings.rerank_depth, state.cpu)
                    if settings.rerank_depth else None)
        state.search = await asyncio.to_thread(load_search, settings, features, reranker, TAXONOMY, state.cpu)
        state.catalog = state.search.catalog
        log.info("search ready over %d items", len(state.catalog))
    await follow_catalog(CatalogConsumer(state.catalog, catalog_dir(settings.data_dir)), settings,
                         state.ingest.dead_letter, stop)


def open_redis(settings: Settings) -> AnyRedis:
    """The API's Redis client: a sized pool where a request waits for a free connection
    (redis-py's default pool fails at once when its connections are busy), every wait bounded."""
    t = settings.redis_timeout_s
    return connect(settings.redis_url, wait_for_connection_s=t, max_connections=settings.redis_pool_size,
                   socket_timeout=t, socket_connect_timeout=t)


UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis down, loading or too slow is the server's trouble for a while, not a bug: 503."""
    log.warning("Redis unavailable for %s: %s", request.url.path, exc)
    return JSONResponse({"detail": f"feature store unavailable: {type(exc).__name__}"}, status_code=503,
                        headers={"Retry-After": "1"})


# Request latency buckets, in seconds: fine below 100 ms, where search, suggest and features answer.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def instrument(app: FastAPI) -> CollectorRegistry:
    """Count and time every request per route template (``/v1/features/users/{user_id}``), into a
    registry of this app's own (tests run several apps in one process)."""
    registry = CollectorRegistry()
    Instrumentator(excluded_handlers=["/metrics"], registry=registry).add(
        http_metrics.requests(registry=registry),
        http_metrics.latency(buckets=LATENCY_BUCKETS, should_include_status=False, registry=registry),
    ).instrument(app)
    return registry


def with_body_schemas(app: FastAPI) -> None:
    """Add the schemas of the bodies that batch endpoints read themselves (events, catalog items)."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(body_components())
        return schema
    app.openapi = openapi  # type: ignore[method-assign]


# The docs pages may load only from this server: ReDoc's footer logo would otherwise come from its CDN.
# (Swagger UI starts from an inline script, and both style with inline styles.)
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; worker-src 'self' blob:")


class DocsPolicy:
    """Sets the docs pages' Content-Security-Policy. Plain ASGI: Starlette's ``BaseHTTPMiddleware``
    would cost every request a task and two memory streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in ("/docs", "/redoc"):
            return await self.app(scope, receive, send)

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Content-Security-Policy"] = DOCS_POLICY
            await send(message)
        await self.app(scope, receive, with_policy)


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.settings, state.keys = settings, Keys(settings.key_prefix)
        if not any(settings.keys_for(scope) for scope in ("ingest", "read", "search", "admin")):
            log.warning("no API keys are configured: every /v1 endpoint answers 403. Set RELEVO_INGEST_KEYS, "
                        "RELEVO_READ_KEYS, RELEVO_SEARCH_KEYS, RELEVO_ADMIN_KEYS (or RELEVO_DEV=1)")
        state.redis = open_redis(settings)
        state.store = OnlineStore(state.redis, state.keys)
        state.ingest = KafkaIngest(settings)
        state.lag = LagMonitor(settings)
        state.alerts = AlertStore(state.redis, state.keys)
        state.models = LiveModel(Registry(registry_dir(settings)))
        # the learned ranker's view of sessions and regions: the workers' region partitions, followed
        state.contexts = RegionContexts(settings.partitions, sources(settings), int(settings.idle_s * 1000),
                                        settings.popularity_half_life_s)
        state.suggest = SuggestService(state.redis, state.keys, SuggestConfig.from_settings(settings),
                                       features=state.store)
        state.search = None  # 503 until the catalog and its encoder are loaded, in the background
        # Searches and rankings compute here, so the event loop answers other requests meanwhile.
        state.cpu = ThreadPoolExecutor(settings.api_cpu_threads, thread_name_prefix="relevo-cpu")
        state.console = console.History(lambda: read_counters(state.redis, state.keys), lambda: state.lag.latest,
                                        state.http_metrics)
        await state.ingest.start()
        stop = asyncio.Event()
        # Each follower restarts after a failure (a broker restart, a bad record) while the API
        # serves on; /readyz reports them.
        state.followers = followers = Supervisor()
        followers.start("lag", state.lag.run)
        followers.start("model updates", lambda: follow_updates(state.models.refresh, settings, stop))
        snapshots = Snapshots(state.redis, state.keys, REGIONS, settings.log_epoch)
        followers.start("regions", lambda: follow_regions(settings, snapshots, state.contexts.make_state, stop))
        followers.start("catalog", lambda: open_search(app, settings, stop))
        followers.start("console", state.console.run)
        followers.start("dead letters", lambda: state.console.follow_dead_letters(settings, stop))
        try:
            yield
        finally:
            stop.set()
            await followers.stop()
            await state.ingest.stop()
            await state.redis.aclose()
            state.cpu.shutdown(cancel_futures=True)

    app = FastAPIOffline(title="Relevo", version=__version__, lifespan=lifespan,
                         description="Streaming personalization for e-commerce search. The operator's console "
                                     "is at [/dashboard](/dashboard).",
                         swagger_ui_parameters={"validatorUrl": None})  # the validator badge calls out
    app.state.http_metrics = instrument(app)
    app.add_middleware(DocsPolicy)
    for module in (ops, ingest, catalog, features, search, rank, suggest, alerts, models, console):
        app.include_router(module.router)
    with_body_schemas(app)
    for error in UNAVAILABLE:
        app.add_exception_handler(error, store_unavailable)
    return app


def serve(settings: Settings) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(1)  # small models; more threads only contend with the event loop
    tune_for_large_heaps()  # every replica holds the region partitions' ranking context

    # Keep-alive longer than a load balancer's idle timeout (60 s on most), so the side that sends
    # next never finds its connection closed under it (uvicorn's default is 5 s).
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, loop="uvloop",
                http="httptools", timeout_keep_alive=75, log_level=settings.log_level.lower(), access_log=False)
