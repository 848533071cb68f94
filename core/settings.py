"""Every setting Relevo reads from the environment, typed, in one place.

>>> s = Settings.from_env({"RELEVO_PARTITIONS": "8", "REDIS_URL": "redis://r:6379/0"})
>>> s.partitions, s.redis_url, s.embedded_kafka, s.embedded_redis
(8, 'redis://r:6379/0', True, False)
>>> sorted(Settings.from_env({"RELEVO_SEARCH_KEYS": "pub-1, pub-2"}).keys_for("search"))
['pub-1', 'pub-2']
>>> Settings().keys_for("admin"), Settings.from_env({"RELEVO_DEV": "1"}).keys_for("admin")
(frozenset(), frozenset({'dev-admin-key'}))
>>> Settings.from_env({"RELEVO_DEV": "no"}).dev
False
>>> Settings.from_env({"RELEVO_PARTITIONS": "many"})
Traceback (most recent call last):
...
ValueError: RELEVO_PARTITIONS must be an integer, got 'many'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

# The public datasets live beside the project checkout, in ``../shared/data``.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POPULARITY_HALF_LIFE_S = 6 * 3600.0  # per-region item counts: a clickstream's day moves them


def _env_field(env: str, default: object, doc: str) -> object:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; ``Settings.from_env()`` reads it from the environment."""

    kafka_bootstrap_servers: str = _env_field(
        "KAFKA_BOOTSTRAP_SERVERS", "", "Kafka brokers; empty starts the embedded broker")
    redis_url: str = _env_field("REDIS_URL", "", "Redis URL; empty starts the embedded server")
    data_dir: Path = _env_field("RELEVO_DATA_DIR", Path(".relevo"), "logs and state of the embedded stack")
    topic_prefix: str = _env_field("RELEVO_TOPIC_PREFIX", "", "prefix for every topic name")
    partitions: int = _env_field("RELEVO_PARTITIONS", 4, "partitions of the event topics")
    replication_factor: int = _env_field("RELEVO_REPLICATION_FACTOR", 1,
                                         "replicas of each topic Relevo creates (3 on a production cluster)")
    app_id: str = _env_field("RELEVO_APP_ID", "relevo", "Faust app id (consumer group)")
    key_prefix: str = _env_field("RELEVO_KEY_PREFIX", "rv", "prefix of every Redis key")
    api_host: str = _env_field("RELEVO_API_HOST", "127.0.0.1", "HTTP API bind address")
    api_port: int = _env_field("RELEVO_API_PORT", 8000, "HTTP API port (0 picks a free one)")
    ingest_keys: str = _env_field("RELEVO_INGEST_KEYS", "", "comma-separated API keys that may send events")
    read_keys: str = _env_field("RELEVO_READ_KEYS", "",
                                "comma-separated API keys that may read features, alerts, models and personalise")
    search_keys: str = _env_field("RELEVO_SEARCH_KEYS", "",
                                  "comma-separated public keys: anonymous search, suggest and query understanding")
    admin_keys: str = _env_field("RELEVO_ADMIN_KEYS", "", "comma-separated API keys allowed everything")
    dev: bool = _env_field("RELEVO_DEV", False,
                           "development mode: with no keys configured, accept dev-<scope>-key for each scope")
    rate_limit_per_s: float = _env_field("RELEVO_RATE_LIMIT_PER_S", 1000.0,
                                         "requests per second per API key, per API process (0: no limit)")
    rate_limit_burst: int = _env_field("RELEVO_RATE_LIMIT_BURST", 2000, "requests a key may send at once")
    redis_pool_size: int = _env_field("RELEVO_REDIS_POOL_SIZE", 64,
                                      "Redis connections per API process; requests beyond wait for one")
    redis_timeout_s: float = _env_field("RELEVO_REDIS_TIMEOUT_S", 2.0,
                                        "longest the API waits for Redis (a connection or an answer): then 503")
    api_cpu_threads: int = _env_field("RELEVO_API_CPU_THREADS", 1,
                                      "threads per API process for the CPU work of searches and rankings "
                                      "(query encoding, retrieval, model scoring), off its event loop; one "
                                      "did better than two on 2 cores (bench.serving)")
    ready_timeout_s: float = _env_field("RELEVO_READY_TIMEOUT_S", 1.0, "longest each /readyz check may take")
    registry_keep: int = _env_field("RELEVO_REGISTRY_KEEP", 20,
                                    "versions the trainer keeps, plus the serving one and its rollback target (0: all)")
    max_batch_bytes: int = _env_field("RELEVO_MAX_BATCH_BYTES", 4 * 1024 * 1024, "largest ingest body")
    max_batch_events: int = _env_field("RELEVO_MAX_BATCH_EVENTS", 10_000, "most events in one ingest call")
    max_event_bytes: int = _env_field("RELEVO_MAX_EVENT_BYTES", 64 * 1024, "largest single event")
    dedupe_window_s: int = _env_field("RELEVO_DEDUPE_WINDOW_S", 3600, "how long event ids are remembered")
    worker_batch: int = _env_field("RELEVO_WORKER_BATCH", 500, "most records the worker takes at once")
    worker_batch_wait_s: float = _env_field("RELEVO_WORKER_BATCH_WAIT_S", 0.005, "longest wait to fill a batch")
    fetch_max_wait_ms: int = _env_field("RELEVO_FETCH_MAX_WAIT_MS", 5, "longest a fetch waits for new records")
    stage_fetch_max_wait_ms: int = _env_field(
        "RELEVO_STAGE_FETCH_MAX_WAIT_MS", 100, "longest a fetch of the region stream (the stages, the API's "
        "ranking context) waits for new records: shorter is fresher but competes with the agent for its loop")
    session_timeout_s: float = _env_field("RELEVO_SESSION_TIMEOUT_S", 6.0, "consumer-group session timeout")
    processors: str = _env_field("RELEVO_PROCESSORS", "features,drift,suggestions,examples,analytics",
                                 "what the worker does: features and suggestions per batch of the event "
                                 "topics; drift, examples and search analytics per partition of the region stream")
    idle_s: float = _env_field("RELEVO_IDLE_S", 5.0, "a source read to its end and silent this long stops "
                               "holding the stream's event time back")
    max_clock_jump_s: int = _env_field("RELEVO_MAX_CLOCK_JUMP_S", 3600, "a source's event time jumps further "
                                       "only when 3 events in a row agree (one wild timestamp moves nothing)")
    log_epoch: int = _env_field("RELEVO_LOG_EPOCH", 0, "which life of the broker's log positions refer to: "
                                "`relevo up` sets it for the embedded broker; keep 0 on a durable Kafka")
    stage_process: bool = _env_field("RELEVO_STAGE_PROCESS", False,
                                     "run each worker's region and global stages in a child process of their own "
                                     "(a second core) instead of beside its agent; the worker exits when it dies")
    checkpoint_s: float = _env_field("RELEVO_CHECKPOINT_S", 10.0, "how often each partition of the region "
                                     "and global stages snapshots its state (at most: a state whose "
                                     "pickling takes longer is saved less often)")
    alert_webhook_url: str = _env_field("RELEVO_ALERT_WEBHOOK_URL", "", "POST drift alerts here (empty: off)")
    alert_webhook_timeout_s: float = _env_field("RELEVO_ALERT_WEBHOOK_TIMEOUT_S", 2.0, "webhook timeout")
    alert_webhook_retries: int = _env_field("RELEVO_ALERT_WEBHOOK_RETRIES", 3, "webhook retries")
    drift_cooldown_s: int = _env_field("RELEVO_DRIFT_COOLDOWN_S", 1800, "quiet time after an alert per metric")
    suggest_blocklist: str = _env_field("RELEVO_SUGGEST_BLOCKLIST", "", "comma-separated terms never suggested")
    suggest_min_support: float = _env_field("RELEVO_SUGGEST_MIN_SUPPORT", 1.5,
                                            "decayed distinct sessions before a query is suggested")
    registry_dir: str = _env_field("RELEVO_REGISTRY_DIR", "", "model registry directory (empty: <data dir>/models)")
    popularity_half_life_s: float = _env_field(
        "RELEVO_POPULARITY_HALF_LIFE_S", POPULARITY_HALF_LIFE_S, "half-life of the per-region item counts the "
        "ranking context keeps (popularity, click-through): hours for a busy clickstream, months for a slow catalog")
    examples_wait_s: float = _env_field("RELEVO_EXAMPLES_WAIT_S", 10.0,
                                        "event time a search waits for its clicks, carts and purchases")
    examples_batch_size: int = _env_field("RELEVO_EXAMPLES_BATCH_SIZE", 256, "labelled lists per training batch")
    examples_batch_age_s: float = _env_field("RELEVO_EXAMPLES_BATCH_AGE_S", 5.0,
                                             "longest a training batch waits to fill")
    rerank_depth: int = _env_field("RELEVO_RERANK_DEPTH", 50,
                                   "search results the learned model re-orders (0: first ranker only)")
    cache_dir: Path = _env_field("RELEVO_CACHE_DIR", Path("~/.cache/relevo"),
                                 "models built from installed packages (the rebuilt E5 is ~450 MB); never in git")
    log_level: str = _env_field("RELEVO_LOG_LEVEL", "INFO", "logging level")

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    def topic(self, name: str) -> str:
        """The full name of a topic, with the configured prefix."""
        return f"{self.topic_prefix}{name}"

    @property
    def processor_names(self) -> list[str]:
        return [p.strip() for p in self.processors.split(",") if p.strip()]

    def keys_for(self, scope: str) -> frozenset[str]:
        """The API keys of ``scope`` (ingest, read, search, admin); ``dev-<scope>-key`` only when
        ``RELEVO_DEV=1`` and none is configured."""
        configured = frozenset(k.strip() for k in getattr(self, f"{scope}_keys").split(",") if k.strip())
        return configured or (frozenset({f"dev-{scope}-key"}) if self.dev else frozenset())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None:
                continue
            kind = type(f.default)
            try:
                values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                noun = {int: "an integer", float: "a number", bool: "1 or 0"}.get(kind, kind.__name__)
                raise ValueError(f"{f.metadata['env']} must be {noun}, got {raw!r}") from None
        return cls(**values)

    def with_servers(self, kafka: str, redis_url: str) -> Settings:
        return replace(self, kafka_bootstrap_servers=kafka, redis_url=redis_url)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        return {f.metadata["env"]: str(getattr(self, f.name)) for f in fields(self)}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def describe() -> str:
    """A table of every variable, for the README and ``relevo settings``."""
    rows = [f"| `{f.metadata['env']}` | `{f.default}` | {f.metadata['doc']} |" for f in fields(Settings)]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])
