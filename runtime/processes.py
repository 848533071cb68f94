"""Running Relevo's processes together: the embedded stack, workers and the HTTP API.

``relevo up`` and ``relevo demo`` use this; so do the end-to-end tests and the
benchmarks, so they measure what a user runs. The addresses of a running stack
are written to ``<data dir>/stack.json`` so other commands (``relevo replay``)
find it without environment variables; so are its API keys (the file is readable
by its owner only): a scope with no key configured gets a random one for this
run, never a default. ``supervise()`` restarts a child that exited (a worker, the
trainer, the API, an embedded server) with backoff and logs why, while the rest
stays up; the embedded broker comes back with an empty log, so its restart also starts
a new log epoch (``relevo.streams.epoch``) and restarts the Kafka clients on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import httpx
import redis

from relevo.core.keys import Keys
from relevo.core.redis import connect, connect_sync
from relevo.core.settings import Settings
from relevo.core.supervision import Backoff
from relevo.drift.combined import STAGE as GLOBAL
from relevo.runtime.stack import ChildServer, EmbeddedStack, free_port
from relevo.streams.epoch import start_epoch
from relevo.streams.lag import end_offset
from relevo.streams.regions import STAGE as REGIONS
from relevo.streams.stages import Snapshots
from relevo.streams.topics import DRIFT_GLOBAL, ensure_topics

log = logging.getLogger(__name__)


async def _drain_state(settings: Settings) -> tuple[bool, tuple[int, ...]]:
    """Whether the stages have drained (see ``Runtime.drained``), and where their snapshots stand."""
    redis, keys = connect(settings.redis_url), Keys(settings.key_prefix)
    try:
        done, positions = True, []
        for partition in range(settings.partitions):
            saved = await Snapshots(redis, keys, REGIONS, settings.log_epoch).load(partition)
            merge = saved[1]["merge"] if saved else None
            positions.append(saved[0] if saved else -1)
            done = done and positions[-1] >= 0 and merge.drained()
        if "drift" in settings.processor_names:
            saved = await Snapshots(redis, keys, GLOBAL, settings.log_epoch).load(0)
            positions.append(saved[0] if saved else -1)
            done = done and saved is not None and saved[0] + 1 >= await end_offset(settings,
                                                                                   settings.topic(DRIFT_GLOBAL))
        return done, tuple(positions)
    finally:
        await redis.aclose()


def stack_file(settings: Settings) -> Path:
    return settings.data_dir / "stack.json"


def servers_dir(settings: Settings) -> Path:
    """Where the embedded broker and Redis keep their files (Redis's append-only file)."""
    return settings.data_dir / "servers"


def resolve(settings: Settings) -> Settings:
    """Fill in the servers of a running ``relevo up`` when none are configured."""
    if not (settings.embedded_kafka or settings.embedded_redis):
        return settings
    path = stack_file(settings)
    if not path.exists():
        return settings
    found = json.loads(path.read_text())
    resolved = settings.with_servers(settings.kafka_bootstrap_servers or found["kafka"],
                                     settings.redis_url or found["redis"])
    return replace(resolved, log_epoch=found.get("log_epoch", 0)) if settings.embedded_kafka else resolved


SCOPES = ("ingest", "read", "search", "admin")


def with_keys(settings: Settings) -> Settings:
    """``settings`` with a random API key for every scope that has none (dev keys stay as they are)."""
    missing = {f"{scope}_keys": f"rv-{scope}-{secrets.token_urlsafe(18)}" for scope in SCOPES
               if not settings.keys_for(scope)}
    return replace(settings, **missing)


def first_key(settings: Settings, scope: str) -> str:
    """One key of ``scope``, for the demo and the benchmarks to call the API with."""
    return sorted(settings.keys_for(scope))[0]


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
            self.stack = EmbeddedStack(servers_dir(s), s.embedded_kafka, s.embedded_redis)
            self.stack.__enter__()
            s = s.with_servers(s.kafka_bootstrap_servers or self.stack.kafka_bootstrap,
                               s.redis_url or self.stack.redis_url)
        if self.with_api and s.api_port == 0:
            s = replace(s, api_port=free_port())
        self.settings = with_keys(s)
        if self.stack and self.stack.start_kafka:
            self._new_log_epoch()
        asyncio.run(ensure_topics(self.settings))
        self._write_stack_file()
        for _ in range(self.n_workers):
            self.start_worker()
        if self.with_trainer:
            self.trainer = self._spawn_trainer()
        if self.with_api:
            self.api = self._spawn_api()
            self.wait_api()

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def redis(self) -> redis.Redis:
        return connect_sync(self.settings.redis_url)

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = self._spawn_worker(len(self.workers))
        self.workers.append(proc)
        return proc

    def _spawn_worker(self, index: int) -> subprocess.Popen[bytes]:
        return spawn("worker", self.settings, self.logs / f"worker-{index}.log")

    def _spawn_trainer(self) -> subprocess.Popen[bytes]:
        return spawn("trainer", self.settings, self.logs / "trainer.log")

    def _spawn_api(self) -> subprocess.Popen[bytes]:
        return spawn("serve", self.settings, self.logs / "api.log")

    def _children(self) -> list[tuple[str, subprocess.Popen[bytes] | None, Callable[[], None]]]:
        """Every supervised child: its name, its process, and how to start it again."""
        def set_worker(i: int) -> Callable[[], None]:
            return lambda: self.workers.__setitem__(i, self._spawn_worker(i))
        children = [(f"worker-{i}", proc, set_worker(i)) for i, proc in enumerate(self.workers)]
        if self.trainer is not None:
            children.append(("trainer", self.trainer, lambda: setattr(self, "trainer", self._spawn_trainer())))
        if self.api is not None:
            children.append(("api", self.api, lambda: setattr(self, "api", self._spawn_api())))
        for server in self.stack.servers if self.stack else ():
            restart = (lambda s=server: self._restart_broker(s)) if server.name == "kafka" else server.start
            children.append((server.name, server.proc, restart))
        return children

    def _write_stack_file(self) -> None:
        s, path = self.settings, stack_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)  # it holds this run's API keys
        path.write_text(json.dumps({"kafka": s.kafka_bootstrap_servers, "redis": s.redis_url, "log_epoch": s.log_epoch,
                                    "api": self.api_url, "keys": {k: first_key(s, k) for k in SCOPES}}))

    def _new_log_epoch(self) -> None:
        """The embedded broker starts with an empty log: every child from now on reads it in a new epoch."""
        epoch = start_epoch(self.redis(), Keys(self.settings.key_prefix), after=self.settings.log_epoch)
        self.settings = replace(self.settings, log_epoch=epoch)
        log.info("the embedded broker's log starts empty: log epoch %d", epoch)

    def _restart_broker(self, server: ChildServer) -> None:
        """The embedded broker comes back with an empty log: its Kafka clients stop first (none may
        read the new log in the old epoch), a new epoch starts, then the broker, its topics and the
        clients again."""
        clients = [*self.workers, *(p for p in (self.trainer, self.api) if p)]
        for proc in clients:
            stop_process(proc, timeout=5.0)  # the broker is gone: nothing is left to flush
        self._new_log_epoch()
        server.start()
        asyncio.run(ensure_topics(self.settings))
        self._write_stack_file()
        self.workers = [self._spawn_worker(i) for i in range(len(self.workers))]
        if self.trainer is not None:
            self.trainer = self._spawn_trainer()
        if self.api is not None:
            self.api = self._spawn_api()
        log.warning("restarted %d Kafka clients on the new log", len(clients))

    def supervise(self, stop: threading.Event, every_s: float = 0.5,
                  backoff: Callable[[], Backoff] = Backoff) -> None:
        """Until ``stop`` is set: restart each child that exited, after a backoff (by default 1 s doubling
        to 30 s, reset after a minute up), saying so in the log; everything else keeps running."""
        backoffs: defaultdict[str, Backoff] = defaultdict(backoff)
        due: dict[str, float] = {}  # child name -> when to start it again
        while not stop.wait(every_s):
            for name, proc, restart in self._children():
                if proc is None or proc.poll() is None:
                    continue
                if name not in due:
                    delay = backoffs[name].next_delay()
                    due[name] = time.monotonic() + delay
                    log.error("%s exited with code %s; restarting it in %.0f s (see %s)", name, proc.returncode,
                              delay, self.logs)
                elif time.monotonic() >= due[name]:
                    del due[name]
                    try:
                        restart()
                    except Exception as exc:  # a server that cannot start yet: try again later
                        log.error("%s did not restart: %s", name, exc)
                        continue
                    backoffs[name].started()
                    log.warning("%s restarted (restart %d)", name, backoffs[name].failures)

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

    def wait_api(self, timeout: float = 120.0) -> None:  # a busy machine takes tens of seconds to import torch
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
        return asyncio.run(_drain_state(self.settings))[0]

    def wait_drained(self, timeout: float = 300.0) -> None:
        """Wait until ``drained()``; give up only when the stages made no progress for ``timeout``
        seconds (a busy machine is slow, not stuck)."""
        deadline, seen = time.monotonic() + timeout, None
        while True:
            done, positions = asyncio.run(_drain_state(self.settings))
            if done:
                return
            if positions != seen:
                deadline, seen = time.monotonic() + timeout, positions
            elif time.monotonic() > deadline:
                raise TimeoutError(f"the stages made no progress for {timeout:.0f}s; see {self.logs}")
            time.sleep(1.0)

    def wait_for_interrupt(self) -> None:
        """Supervise the children until Ctrl-C or SIGTERM."""
        # Also when started in the background, where a shell leaves SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            self.supervise(threading.Event())
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
