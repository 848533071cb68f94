"""Running Relevo's processes together: the embedded stack, workers and the HTTP API.

``relevo up`` and ``relevo demo`` use this; so do the end-to-end tests and the
benchmarks, so they measure what a user runs. The addresses of a running stack
are written to ``<data dir>/stack.json`` so other commands (``relevo replay``)
find it without environment variables.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import redis

from relevo.core.keys import Keys
from relevo.core.redis import connect, connect_sync
from relevo.core.settings import Settings
from relevo.drift.combined import STAGE as GLOBAL
from relevo.runtime.stack import EmbeddedStack, free_port
from relevo.streams.lag import end_offset
from relevo.streams.regions import STAGE as REGIONS
from relevo.streams.stages import Snapshots
from relevo.streams.topics import DRIFT_GLOBAL, ensure_topics

log = logging.getLogger(__name__)


async def _drained(settings: Settings) -> bool:
    redis, keys = connect(settings.redis_url), Keys(settings.key_prefix)
    try:
        for partition in range(settings.partitions):
            saved = await Snapshots(redis, keys, REGIONS).load(partition)
            merge = saved[1]["merge"] if saved else None
            if merge is None or len(merge) or merge.watermark() != float("inf"):
                return False
        if "drift" not in settings.processor_names:
            return True
        saved = await Snapshots(redis, keys, GLOBAL).load(0)
        return saved is not None and saved[0] + 1 >= await end_offset(settings, settings.topic(DRIFT_GLOBAL))
    finally:
        await redis.aclose()


def stack_file(settings: Settings) -> Path:
    return settings.data_dir / "stack.json"


def resolve(settings: Settings) -> Settings:
    """Fill in the servers of a running ``relevo up`` when none are configured."""
    if not (settings.embedded_kafka or settings.embedded_redis):
        return settings
    path = stack_file(settings)
    if not path.exists():
        return settings
    found = json.loads(path.read_text())
    return settings.with_servers(settings.kafka_bootstrap_servers or found["kafka"],
                                 settings.redis_url or found["redis"])


def spawn(command: str, settings: Settings, logfile: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start ``relevo COMMAND`` as a child process with these settings in its environment."""
    env = {**os.environ, **settings.to_env()}
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "relevo.runtime.cli", command, *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Runtime(AbstractContextManager["Runtime"]):
    """The embedded stack (unless external servers are configured), N workers, the trainer and the API."""

    def __init__(self, settings: Settings, workers: int = 1, api: bool = True, trainer: bool = False) -> None:
        self.requested, self.n_workers, self.with_api, self.with_trainer = settings, workers, api, trainer
        self.settings = settings
        self.stack: EmbeddedStack | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.api: subprocess.Popen[bytes] | None = None
        self.trainer: subprocess.Popen[bytes] | None = None

    @property
    def logs(self) -> Path:
        return self.settings.data_dir / "logs"

    def __enter__(self) -> Runtime:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        s = self.requested
        if s.embedded_kafka or s.embedded_redis:
            self.stack = EmbeddedStack(s.data_dir / "servers", s.embedded_kafka, s.embedded_redis)
            self.stack.__enter__()
            s = s.with_servers(s.kafka_bootstrap_servers or self.stack.kafka_bootstrap,
                               s.redis_url or self.stack.redis_url)
        if self.with_api and s.api_port == 0:
            s = Settings(**{**s.__dict__, "api_port": free_port()})
        self.settings = s
        asyncio.run(ensure_topics(s))
        stack_file(s).parent.mkdir(parents=True, exist_ok=True)
        stack_file(s).write_text(json.dumps({"kafka": s.kafka_bootstrap_servers, "redis": s.redis_url,
                                             "api": self.api_url}))
        for _ in range(self.n_workers):
            self.start_worker()
        if self.with_trainer:
            self.trainer = spawn("trainer", s, self.logs / "trainer.log")
        if self.with_api:
            self.api = spawn("serve", s, self.logs / "api.log")
            self.wait_api()

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def redis(self) -> redis.Redis:
        return connect_sync(self.settings.redis_url)

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = spawn("worker", self.settings, self.logs / f"worker-{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def wait_workers_ready(self, since_ms: int = 0, timeout: float = 60.0) -> None:
        """Block until as many workers as are running have joined the consumer group since ``since_ms``."""
        client, key = self.redis(), Keys(self.settings.key_prefix).workers
        deadline = time.monotonic() + timeout
        running = sum(1 for w in self.workers if w.poll() is None)
        while time.monotonic() < deadline:
            joined = [int(v) for v in client.hvals(key) if int(v) >= since_ms]
            if len(joined) >= running:
                return
            time.sleep(0.2)
        raise TimeoutError(f"workers did not join within {timeout:.0f}s; see {self.logs}")

    def wait_api(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api is not None and self.api.poll() is not None:
                raise RuntimeError(f"the API exited with code {self.api.returncode}; see {self.logs}/api.log")
            try:
                if httpx.get(self.api_url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the API did not answer within {timeout:.0f}s; see {self.logs}/api.log")

    def drained(self) -> bool:
        """Whether the keyed stages have applied everything the event topics hold: every region
        partition's snapshot has every source idle and nothing buffered, and the global stage has
        read every bucket (what a bounded replay waits for before it reads alerts)."""
        return asyncio.run(_drained(self.settings))

    def wait_drained(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stages did not drain within {timeout:.0f}s; see {self.logs}")
            time.sleep(0.5)

    def wait_for_interrupt(self) -> None:
        """Block until Ctrl-C or SIGTERM, or until a worker exits."""
        # Also when started in the background, where a shell leaves SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while all(p.poll() is None for p in self.workers):
                time.sleep(0.5)
            log.error("a worker exited; see %s", self.logs)
        except KeyboardInterrupt:
            log.info("stopping")

    def close(self) -> None:
        for proc in [*self.workers, *(p for p in (self.trainer, self.api) if p)]:
            stop_process(proc)
        if self.stack:
            self.stack.stop()
        stack_file(self.settings).unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.close()
