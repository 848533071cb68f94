"""A stream worker: the Faust app with what ``RELEVO_PROCESSORS`` names, and the keyed stages.

Per batch of the event topics (keyed by user): ``features`` and ``suggestions`` write
Redis, and the region forwarder re-keys every valid event by region. Per partition of
the region stream (keyed by region, ``relevo.streams.regions``): ``drift`` (the
regions' detectors) and ``examples`` (the learning loop's labelled lists). One global
stage combines the region partitions' drift buckets. This table is the one place that
knows the constructors, so the stream side never imports what it hosts.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable

import faust
import redis.asyncio as aioredis
import uvloop

from relevo.core import language
from relevo.core.heap import tune_for_large_heaps
from relevo.core.keys import Keys
from relevo.core.redis import connect
from relevo.core.settings import Settings
from relevo.drift.combined import STAGE as GLOBAL
from relevo.drift.combined import GlobalDrift
from relevo.drift.regional import RegionalDrift
from relevo.drift.sinks import AlertStore, MetricsSink, Sink, TopicSink, WebhookSink
from relevo.features.writer import FeatureWriter
from relevo.models.examples import ExamplesBuilder, record_emitter
from relevo.search.analytics import SearchAnalytics
from relevo.streams.app import create_app
from relevo.streams.eventtime import SourceProgress
from relevo.streams.processors import BatchProcessor
from relevo.streams.regions import STAGE as REGIONS
from relevo.streams.regions import RegionForwarder, RegionOperator, RegionPartition, sources
from relevo.streams.stages import Outputs, PartitionedStage, Snapshots, run_all
from relevo.streams.topics import BY_REGION, DRIFT_ALERTS, DRIFT_GLOBAL, TRAIN_BATCHES
from relevo.suggestions.config import SuggestConfig
from relevo.suggestions.processor import SuggestionUpdater

log = logging.getLogger(__name__)
BATCH_PROCESSORS = ("features", "suggestions")
REGION_OPERATORS = ("drift", "examples", "analytics")


def _check(settings: Settings) -> None:
    unknown = [n for n in settings.processor_names if n not in (*BATCH_PROCESSORS, *REGION_OPERATORS)]
    if unknown:
        raise ValueError(f"RELEVO_PROCESSORS names unknown processors {unknown}; "
                         f"known: {sorted((*BATCH_PROCESSORS, *REGION_OPERATORS))}")


def build_processors(settings: Settings, redis: aioredis.Redis, keys: Keys, outputs: Outputs,
                     progress: SourceProgress) -> list[BatchProcessor]:
    """What runs on each batch of the event topics (all at once), the region forwarder among them."""
    _check(settings)
    processors: list[BatchProcessor] = []
    for name in settings.processor_names:
        if name == "features":
            processors.append(FeatureWriter(redis, keys, settings.dedupe_window_s))
        elif name == "suggestions":
            processors.append(SuggestionUpdater(redis, keys, SuggestConfig.from_settings(settings)))
    processors.append(RegionForwarder(outputs.sender(settings.topic(BY_REGION)), outputs.flush, settings.partitions,
                                      progress))
    return processors


def _sinks(settings: Settings, outputs: Outputs) -> list[Sink]:
    sinks: list[Sink] = [MetricsSink(), TopicSink(outputs.sender(settings.topic(DRIFT_ALERTS)))]
    if settings.alert_webhook_url:
        sinks.append(WebhookSink(settings.alert_webhook_url, timeout_s=settings.alert_webhook_timeout_s,
                                 retries=settings.alert_webhook_retries))
    return sinks


def region_operators(settings: Settings, redis: aioredis.Redis, keys: Keys, outputs: Outputs,
                     sinks: list[Sink]) -> Callable[[int], list[RegionOperator]]:
    """The operators of each region partition, from the settings."""
    store = AlertStore(redis, keys)
    to_global = outputs.sender(settings.topic(DRIFT_GLOBAL))
    to_trainer = record_emitter(outputs.sender(settings.topic(TRAIN_BATCHES)))

    def make(partition: int) -> list[RegionOperator]:
        operators: list[RegionOperator] = []
        for name in settings.processor_names:
            if name == "drift":
                operators.append(RegionalDrift(partition, store, sinks, to_global,
                                               cooldown_ms=settings.drift_cooldown_s * 1000))
            elif name == "examples":
                operators.append(ExamplesBuilder(to_trainer, wait_s=settings.examples_wait_s,
                                                 popularity_half_life_s=settings.popularity_half_life_s,
                                                 batch_size=settings.examples_batch_size,
                                                 batch_age_s=settings.examples_batch_age_s))
            elif name == "analytics":  # a search's outcome waits as long as its training example does
                operators.append(SearchAnalytics(partition, redis, keys, wait_s=settings.examples_wait_s))
        return operators
    return make


def build_stages(settings: Settings, redis: aioredis.Redis, keys: Keys, outputs: Outputs) -> list[PartitionedStage]:
    """The region stage (its partitions' operators) and, with drift, the global stage."""
    sinks = _sinks(settings, outputs)
    operators = region_operators(settings, redis, keys, outputs, sinks)
    upstream = sources(settings)

    async def publish_clock(ts: int) -> None:
        await redis.eval(MAX_SET, 1, keys.clock, ts)

    def region_partition(partition: int, dump: object | None) -> RegionPartition:
        return RegionPartition(partition, operators(partition), upstream, idle_ms=int(settings.idle_s * 1000),
                               dump=dump, on_clock=publish_clock)  # type: ignore[arg-type]

    common = dict(bootstrap_servers=settings.kafka_bootstrap_servers, outputs=outputs,
                  checkpoint_s=settings.checkpoint_s, session_timeout_s=settings.session_timeout_s,
                  fetch_max_wait_ms=settings.stage_fetch_max_wait_ms)
    stages = [PartitionedStage(REGIONS, topic=settings.topic(BY_REGION), group=f"{settings.app_id}-{REGIONS}",
                               make_state=region_partition,
                               snapshots=Snapshots(redis, keys, REGIONS, settings.log_epoch), **common)]
    if "drift" in settings.processor_names:
        store = AlertStore(redis, keys)
        stages.append(PartitionedStage(
            GLOBAL, topic=settings.topic(DRIFT_GLOBAL), group=f"{settings.app_id}-{GLOBAL}",
            make_state=lambda _, dump: GlobalDrift(settings.partitions, store, sinks,
                                                   cooldown_ms=settings.drift_cooldown_s * 1000, dump=dump),
            snapshots=Snapshots(redis, keys, GLOBAL, settings.log_epoch), **common))
    return stages


# The stream clock only moves forward, whichever region partition publishes it.
MAX_SET = "local c = tonumber(redis.call('GET', KEYS[1])) if not c or tonumber(ARGV[1]) > c then " \
          "redis.call('SET', KEYS[1], ARGV[1]) end return 1"


def run_worker(settings: Settings) -> None:
    """Run one worker process until SIGINT/SIGTERM; with ``stage_process``, its stages in a child."""
    _check(settings)
    # libuv's event loop: 15% less worker CPU per event than asyncio's (224 vs 264 µs, default
    # processors, Trivago slice at 200 events per record, one A/B on an idle machine).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    tune_for_large_heaps()
    keys = Keys(settings.key_prefix)
    stages = None
    if settings.stage_process:
        _start_stage_process(settings)
    else:
        _preload(settings)

        def stages(redis: aioredis.Redis, outputs: Outputs) -> list[PartitionedStage]:
            return build_stages(settings, redis, keys, outputs)
    app = create_app(settings,
                     lambda redis, outputs, progress: build_processors(settings, redis, keys, outputs, progress),
                     stages)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()


def _preload(settings: Settings) -> None:
    """Load now what the stages would otherwise load on the loop, inside their first batch:
    the language model drift identifies queries with (0.7 s of blocked loop, measured)."""
    if "drift" in settings.processor_names:
        language.load()


def _start_stage_process(settings: Settings) -> None:
    """The stages in a child process, watched: when it ends, the worker stops (its supervisor
    restarts both), and when the worker dies the child gets SIGTERM from the kernel."""
    child = multiprocessing.get_context("spawn").Process(target=run_stages, args=(settings,), name="relevo-stages")
    child.start()

    def watch() -> None:
        child.join()
        log.error("the stage process exited with %s; stopping the worker", child.exitcode)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True, name="stage-watch").start()


def run_stages(settings: Settings) -> None:
    """The region and global stages of one worker, alone in a process, until SIGTERM or its parent dies."""
    if sys.platform == "linux":  # PR_SET_PDEATHSIG: a SIGKILLed worker must not leave its stages running
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    logging.basicConfig(level=settings.log_level, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    tune_for_large_heaps()
    _preload(settings)

    async def main() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C reaches the whole process group
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        redis, outputs = connect(settings.redis_url), Outputs(settings.kafka_bootstrap_servers)
        try:
            await run_all(build_stages(settings, redis, Keys(settings.key_prefix), outputs), stop)
        finally:
            await outputs.stop()
            await redis.aclose()
    uvloop.run(main())
