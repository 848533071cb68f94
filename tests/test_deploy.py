"""deploy/ says what production needs, checked without Docker: the compose file as YAML (PyYAML
resolves its anchors and merge keys as compose does), then by ``docker compose config`` (or Debian's
``docker-compose``) where one is there; the Kubernetes manifests by ``kubernetes-validate``; the
Prometheus and Grafana files against the API's real ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from relevo.core.settings import Settings
from relevo.runtime import cli
from relevo.streams.topics import CATALOG, all_topics
from tests.systools import debian_package

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KEYS = {"RELEVO_INGEST_KEYS": "i", "RELEVO_READ_KEYS": "r", "RELEVO_SEARCH_KEYS": "s", "RELEVO_ADMIN_KEYS": "a"}
RELEVO = ("topics", "worker", "trainer", "api")  # the services running Relevo's image


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load("compose.yaml")["services"]


def test_compose_runs_every_relevo_service_with_one_environment_and_no_default_keys(services) -> None:
    assert {"kafka", "redis", "topics", "worker", "trainer", "api", "prometheus", "grafana"} <= set(services)
    env = services["api"]["environment"]
    assert all(services[name]["environment"] == env for name in RELEVO if name != "worker"), \
        "a service replaced the shared block"
    assert services["worker"]["environment"] == {**env, "RELEVO_STAGE_PROCESS": "1"}  # the shared block, plus
    for name in KEYS:  # ${NAME:?...}: compose refuses to start without it
        assert env[name].startswith(f"${{{name}:?"), name
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "RELEVO_DEV" not in env
    settings = Settings.from_env({k: v for k, v in env.items() if k not in KEYS})
    assert (settings.partitions, settings.replication_factor, settings.registry_dir) == (12, 1, "/registry")
    assert settings.kafka_bootstrap_servers == "kafka:9092" and settings.redis_url.startswith("redis://redis:")


def test_compose_persists_state_shares_a_writable_registry_and_checks_health(services) -> None:
    redis = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis and "--appendonly yes" in redis  # dedupe sets never evicted
    assert "redis-data:/data" in services["redis"]["volumes"]
    kafka = services["kafka"]
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert f"kafka-data:{kafka['environment']['KAFKA_LOG_DIRS']}" in kafka["volumes"]
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # `topics` makes them
    for name in ("trainer", "api"):  # promote and rollback write the registry too
        assert "registry:/registry" in services[name]["volumes"], name
    for name in ("kafka", "redis", "api", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("worker", "trainer", "api"):
        assert services[name]["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
    assert services["topics"]["command"] == ["relevo", "topics", "create"]
    assert "devices" not in str(services["trainer"].get("deploy"))  # the CPU unless compose.gpu.yaml is added
    gpu = load("compose.gpu.yaml")["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["capabilities"] == ["gpu"]


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """``docker compose`` where the plugin is there, else Debian's ``docker-compose`` (installed if missing);
    neither needs a Docker engine to render a configuration."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    found = debian_package("docker-compose", "docker-compose")
    if found is None:
        pytest.skip("neither `docker compose` nor Debian's docker-compose is available, and apt could not install it")
    return [found]


def config(compose: list[str], *files: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [part for f in files for part in ("-f", str(DEPLOY / f))]
    return subprocess.run([*compose, *args, "config"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env})


def test_compose_config_validates_and_refuses_to_start_without_keys(compose) -> None:
    refused = config(compose, "compose.yaml", env={})
    assert refused.returncode != 0 and "set RELEVO_INGEST_KEYS" in refused.stderr + refused.stdout
    answer = config(compose, "compose.yaml", "compose.gpu.yaml", env=KEYS | {"GRAFANA_ADMIN_PASSWORD": "g"})
    assert answer.returncode == 0, answer.stderr
    services = yaml.safe_load(answer.stdout)["services"]
    assert all(services[name]["environment"]["RELEVO_INGEST_KEYS"] == "i" for name in RELEVO)
    assert services["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_kubernetes_manifests_validate() -> None:
    manifest = DEPLOY / "k8s" / "relevo.yaml"
    tool = Path(sys.executable).with_name("kubernetes-validate")
    answer = subprocess.run([str(tool), "--strict", str(manifest)], capture_output=True, text=True)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(manifest.read_text())}
    settings = Settings.from_env(docs["ConfigMap", "relevo"]["data"])
    assert (settings.replication_factor, settings.partitions, settings.registry_dir) == (3, 12, "/registry")
    job = docs["Job", "relevo-topics"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["relevo", "topics", "create"]
    for name in ("relevo-api", "relevo-trainer"):
        mounts = docs["Deployment", name]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        assert [m for m in mounts if m["name"] == "registry" and not m.get("readOnly")], name
    assert "ReadWriteMany" in docs["PersistentVolumeClaim", "relevo-registry"]["spec"]["accessModes"]
    api = docs["Deployment", "relevo-api"]["spec"]["template"]
    container = api["spec"]["containers"][0]
    assert {"secretRef": {"name": "relevo-keys"}} in container["envFrom"]  # keys only from the Secret
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = api["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"] == settings.api_port


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    ignored = {line for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")}
    assert {".venv", ".git", ".relevo"} <= ignored
    dockerfile = (DEPLOY / "Dockerfile").read_text().splitlines()
    copied = {source for line in dockerfile if line.startswith("COPY") for source in line.split()[1:-1]}
    assert {"pyproject.toml", "README.md", "core", "serving"} <= copied and not copied & ignored


def test_prometheus_scrapes_every_api_replica_and_grafana_reads_prometheus(services) -> None:
    scrape = load("prometheus.yml")["scrape_configs"][0]
    target = scrape["dns_sd_configs"][0]
    assert target["names"] == ["api"] and target["port"] == Settings().api_port  # each replica's address
    assert scrape["metrics_path"] == "/metrics"  # the series Grafana draws: tests/test_console.py
    assert "prometheus.yml" in " ".join(services["prometheus"]["volumes"])
    datasource = load("grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    provider = load("grafana/provisioning/dashboards/relevo.yaml")["providers"][0]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in services["grafana"]["volumes"]


def grafana_series() -> set[str]:
    """Every Relevo and HTTP series deploy/grafana's dashboard queries."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "relevo.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {name for e in expressions for name in re.findall(r"\b((?:relevo|http)_[a-z_]+)\b", e)}


def test_topics_create_makes_every_topic_with_its_partitions_and_the_catalog_compacted(kafka_bootstrap, monkeypatch,
                                                                                      capsys) -> None:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix="deploy.", partitions=3)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "RELEVO_TOPIC_PREFIX", "RELEVO_PARTITIONS"):
        monkeypatch.setenv(name, settings.to_env()[name])
    wanted = all_topics(settings)
    for _ in range(2):  # a second run (the job retried) finds them made and changes nothing
        assert cli.main(["topics", "create"]) == 0
        assert capsys.readouterr().out.splitlines() == [f"{name}\tpartitions={n}" for name, n in wanted.items()]

    async def described() -> tuple[dict[str, int], dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            topics = await admin.describe_topics(list(wanted))
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic(CATALOG))])
        finally:
            await admin.close()
        entries = configs[0].resources[0][4]
        return {t["topic"]: len(t["partitions"]) for t in topics}, {e[0]: e[1] for e in entries}

    partitions, catalog = asyncio.run(described())
    assert partitions == wanted and catalog["cleanup.policy"] == "compact"
