"""Real servers for the tests: an embedded Kafka-protocol broker and a Redis server on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relevo.core.settings import SHARED_DATA
from relevo.runtime.stack import kafka_server, redis_server
from tests.systools import debian_package


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[redis.Redis]:
    """A clean database for one test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kafka_server(tmp_path_factory.mktemp("kafka")) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real three-master Redis Cluster (the embedded server), every slot assigned."""
    from tests.clusterkit import local_cluster

    with local_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed when missing (the console and docs tests drive it headless)."""
    path = debian_package(CHROMIUM, "chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed and `apt-get install -y chromium` failed here")
    return path
