"""Which processors a worker runs, built from the settings (``RELEVO_PROCESSORS``).

Each processor is plain Python over validated batches (``streams.processors``);
this is the one place that knows their constructors.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from features.keys import Keys
from features.store import FeatureWriter
from relevo.settings import Settings
from streams.processors import BatchProcessor

Send = Callable[[bytes], Awaitable[object]]
EXAMPLES_PER_RECORD = 64


def _features(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    return FeatureWriter(redis, keys, settings.dedupe_window_s)


def _drift(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    from drift.monitor import DriftMonitor
    from drift.sinks import MetricsSink, TopicSink, WebhookSink

    sinks: list = [MetricsSink(), TopicSink(send["drift.alerts"])]
    if settings.alert_webhook_url:
        sinks.append(WebhookSink(settings.alert_webhook_url, timeout_s=settings.alert_webhook_timeout_s,
                                 retries=settings.alert_webhook_retries))
    return DriftMonitor(redis, sinks, keys=keys, cooldown_ms=settings.drift_cooldown_s * 1000)


def _suggestions(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    from models.suggest.processor import SuggestionUpdater

    return SuggestionUpdater(redis, keys, settings.suggest_config())


def _examples(settings: Settings, redis: aioredis.Redis, keys: Keys, send: dict[str, Send]) -> BatchProcessor:
    import orjson

    from models.examples import ExamplesBuilder
    from models.follow import committed_history

    async def emit(batch: list[dict]) -> None:
        # A labelled list carries a feature row per item: keep records well under Kafka's 1 MiB.
        for start in range(0, len(batch), EXAMPLES_PER_RECORD):
            await send["train.batches"](orjson.dumps(batch[start:start + EXAMPLES_PER_RECORD]))
    async def history() -> list[dict]:
        return await committed_history(settings, int((time.time() - settings.context_warmup_s) * 1000))

    return ExamplesBuilder(emit, wait_s=settings.examples_wait_s, batch_size=settings.examples_batch_size,
                           batch_age_s=settings.examples_batch_age_s, history=history)


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
