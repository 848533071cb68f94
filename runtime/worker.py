"""A stream worker: the Faust app with the processors ``RELEVO_PROCESSORS`` names.

Each processor is plain Python over validated batches
(``relevo.streams.processors``); this table is the one place that knows their
constructors, so the stream side never imports what it hosts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import faust
import redis.asyncio as aioredis
from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.features.writer import FeatureWriter
from relevo.streams.app import create_app
from relevo.streams.processors import BatchProcessor, Send
from relevo.streams.topics import DRIFT_ALERTS, TRAIN_BATCHES


def _features(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    return FeatureWriter(redis, keys, settings.dedupe_window_s)


def _drift(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    from relevo.drift.monitor import DriftMonitor
    from relevo.drift.sinks import MetricsSink, Sink, TopicSink, WebhookSink

    sinks: list[Sink] = [MetricsSink(), TopicSink(send[DRIFT_ALERTS])]
    if settings.alert_webhook_url:
        sinks.append(WebhookSink(settings.alert_webhook_url, timeout_s=settings.alert_webhook_timeout_s,
                                 retries=settings.alert_webhook_retries))
    return DriftMonitor(redis, sinks, keys=keys, cooldown_ms=settings.drift_cooldown_s * 1000)


def _suggestions(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    from relevo.suggestions.config import SuggestConfig
    from relevo.suggestions.processor import SuggestionUpdater

    return SuggestionUpdater(redis, keys, SuggestConfig.from_settings(settings))


def _examples(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    from relevo.models.examples import ExamplesBuilder, record_emitter
    from relevo.streams.follow import committed_history

    async def history() -> list[dict]:
        return await committed_history(settings, int((time.time() - settings.context_warmup_s) * 1000))

    return ExamplesBuilder(record_emitter(send[TRAIN_BATCHES]), wait_s=settings.examples_wait_s,
                           batch_size=settings.examples_batch_size, batch_age_s=settings.examples_batch_age_s,
                           history=history)


BUILDERS: dict[str, Callable[[Settings, aioredis.Redis, Keys, dict[str, Send]], BatchProcessor]] = {
    "features": _features,
    "drift": _drift,
    "suggestions": _suggestions,
    "examples": _examples,
}


def build_processors(settings: Settings, redis: aioredis.Redis, keys: Keys,
                     send: dict[str, Send]) -> list[BatchProcessor]:
    """The processors named in the settings, in order; ``send`` maps topic names to producers."""
    unknown = [n for n in settings.processor_names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"RELEVO_PROCESSORS names unknown processors {unknown}; known: {sorted(BUILDERS)}")
    return [BUILDERS[name](settings, redis, keys, send) for name in settings.processor_names]


def run_worker(settings: Settings) -> None:
    """Run one worker process until SIGINT/SIGTERM."""
    keys = Keys(settings.key_prefix)
    app = create_app(settings, lambda redis, send: build_processors(settings, redis, keys, send))
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
