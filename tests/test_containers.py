"""The integration tests again, on the images deploy/compose.yaml runs (Apache Kafka in KRaft mode,
Redis with AOF and noeviction) started by testcontainers where a Docker engine exists; skipped,
with the reason, where there is none.

The fixtures below replace conftest's embedded broker and Redis for this module only, and the
tests imported from the other modules run here again against them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from relevo.runtime.stack import free_port
from tests.test_api import (  # noqa: F401 (collected again here, on the containers)
    api,
    test_health_readiness_and_metrics,
    test_ingest_answers_per_event,
    test_python_client_round_trip,
)
from tests.test_stack import test_kafka_broker_takes_a_record, test_redis_server_answers  # noqa: F401
from tests.test_worker import (  # noqa: F401
    test_features_from_kafka_match_a_plain_recomputation,
    test_sigkill_mid_replay_leaves_every_feature_applied_once,
)

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "compose.yaml").read_text())["services"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docker_engine() -> None:
    import docker

    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine to run {COMPOSE['kafka']['image']} and {COMPOSE['redis']['image']}: {exc}")


@pytest.fixture(scope="module")
def kafka_bootstrap(docker_engine: None) -> Iterator[str]:
    """Apache Kafka with deploy/compose.yaml's settings, reachable from this host on a free port."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = free_port()
    env = {**COMPOSE["kafka"]["environment"], "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
           "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
           # the tests make their (prefixed) topics as they go; a deployment makes them with `relevo topics create`
           "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true"}
    with DockerContainer(COMPOSE["kafka"]["image"]).with_envs(**env).with_bind_ports(9092, port) as kafka:
        wait_for_logs(kafka, "Kafka Server started", timeout=180)
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def redis_url(docker_engine: None) -> Iterator[str]:
    """Redis with deploy/compose.yaml's command (AOF, noeviction)."""
    from testcontainers.community.redis import RedisContainer

    with RedisContainer(COMPOSE["redis"]["image"]).with_command(COMPOSE["redis"]["command"]) as server:
        yield f"redis://{server.get_container_host_ip()}:{server.get_exposed_port(6379)}/0"
