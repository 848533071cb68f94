"""The HTTP API: one FastAPI app, its routers, and what they share (Redis, Kafka, settings)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from fastapi import FastAPI

from relevo import __version__
from relevo.core.keys import Keys
from relevo.core.redis import connect
from relevo.core.settings import Settings
from relevo.drift.sinks import AlertStore
from relevo.features.online import OnlineStore
from relevo.models.examples import RegionContexts
from relevo.models.live import LiveModel
from relevo.models.registry import Registry
from relevo.models.rerank import LearnedReranker
from relevo.models.trainer_worker import registry_dir
from relevo.search.catalog_store import CatalogConsumer, build_search_service, catalog_dir, open_catalog
from relevo.serving import alerts, features, ingest, models, ops, search, suggest
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

    async def send(self, events: Iterable[Event]) -> None:
        await self.producer.send(events)

    async def dead_letter(self, raw: bytes, reason: str) -> None:
        await self.producer.producer.send_and_wait(
            self.settings.topic(DLQ), raw, headers=[("reason", reason.encode()), ("topic", b"api")])

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


async def open_search(app: FastAPI, settings: Settings, stop: asyncio.Event) -> None:
    """Load the catalog and the encoder (tens of seconds the first time), then follow ``catalog.items``."""
    state = app.state

    async def features(user_id: str | None, region: str | None) -> tuple[dict | None, dict | None]:
        user = await state.store.user(user_id) if user_id else None
        return user, await state.store.region(region) if region else None

    catalog = await asyncio.to_thread(open_catalog, settings.data_dir)
    reranker = (LearnedReranker(state.models, state.contexts.for_region, settings.rerank_depth)
                if settings.rerank_depth else None)
    state.search = await asyncio.to_thread(build_search_service, catalog, features, reranker)
    log.info("search ready over %d items", len(catalog))
    await follow_catalog(CatalogConsumer(catalog, catalog_dir(settings.data_dir)), settings,
                         state.ingest.dead_letter, stop)


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.settings, state.keys = settings, Keys(settings.key_prefix)
        state.redis = connect(settings.redis_url)
        state.store = OnlineStore(state.redis, state.keys)
        state.ingest = KafkaIngest(settings)
        state.lag = LagMonitor(settings)
        state.alerts = AlertStore(state.redis, state.keys)
        state.models = LiveModel(Registry(registry_dir(settings)))
        # the learned ranker's view of sessions and regions: the workers' region partitions, followed
        state.contexts = RegionContexts(settings.partitions, sources(settings), int(settings.idle_s * 1000))
        state.suggest = SuggestService(state.redis, state.keys, SuggestConfig.from_settings(settings),
                                       features=state.store)
        state.search = None  # 503 until the catalog and its encoder are loaded, in the background
        await state.ingest.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(state.lag.run()),
                 asyncio.create_task(follow_updates(state.models.refresh, settings, stop)),
                 asyncio.create_task(follow_regions(settings, Snapshots(state.redis, state.keys, REGIONS),
                                                    state.contexts.make_state, stop)),
                 asyncio.create_task(open_search(app, settings, stop))]
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await state.ingest.stop()
            await state.redis.aclose()

    app = FastAPI(title="Relevo", version=__version__, lifespan=lifespan,
                  description="Streaming personalization for e-commerce search.")
    for module in (ops, ingest, features, search, suggest, alerts, models):
        app.include_router(module.router)
    return app


def serve(settings: Settings) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(1)  # small models; more threads only contend with the event loop

    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level.lower(), access_log=False)
