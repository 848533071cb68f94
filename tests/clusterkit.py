"""A real local Redis Cluster for the tests: three masters of the embedded server on free ports."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from relevo.runtime.stack import ChildServer, redis_binary


def _cli(server: str) -> str:
    for name in ("valkey-cli", "redis-cli"):
        candidate = Path(server).with_name(name)
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if found is None:
        raise FileNotFoundError(f"no cluster CLI beside {server}")
    return found


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher, below 65536) is free too."""
    while True:
        port = random.randint(20_000, 55_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


@contextmanager
def local_cluster(data_dir: Path, masters: int = 3, timeout: float = 30.0) -> Iterator[str]:
    """Start ``masters`` cluster-enabled servers, assign every slot, yield a URL of one node."""
    binary = redis_binary()
    servers = []
    try:
        for n in range(masters):
            node_dir = data_dir / f"node{n}"

            def command(port: int, node_dir: Path = node_dir) -> list[str]:
                return [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node_dir.resolve() / "nodes.conf"), "--save", "",
                        "--appendonly", "no", "--dir", str(node_dir.resolve())]
            servers.append(ChildServer(f"cluster-{n}", command, node_dir, port=_cluster_port()).start())
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run([_cli(binary), "--cluster", "create", *addresses, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:  # every node must agree the cluster is up before the tests use it
            states = [redis.Redis(port=s.port).cluster("info")["cluster_state"] for s in servers]
            if all(state == "ok" for state in states):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok within {timeout:.0f}s: {states}")
            time.sleep(0.1)
        yield f"redis://{addresses[0]}/0"
    finally:
        for server in servers:
            server.stop()
