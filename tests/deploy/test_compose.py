"""The local stack (deploy/compose.yaml) checked statically, since no image registry is
reachable here: the file loads, every file it mounts exists, the Prometheus config it
mounts passes ``promtool check config`` and scrapes the gradsentry service where it listens
with the alert rules mounted where the config looks, and Grafana's provisioning points at
the Prometheus service and at the mounted dashboard."""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import ServerConfig
from tests.deploy.conftest import ALERTS, COMPOSE, DASHBOARD, DEPLOY, PROMETHEUS_CONFIG, REPO
from tests.prometheus_helpers import JOB, promtool

SERVICES = {"gradsentry", "torchserve", "prometheus", "grafana"}
PROVISIONING = DEPLOY / "grafana" / "provisioning"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file a container path comes from, through a file or directory bind mount."""
    for target, source in bind_mounts(service).items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / posixpath.relpath(container_path, target)
    pytest.fail(f"{container_path} is not bind-mounted")


def published(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes ("host:container")."""
    return {int(str(p).split(":")[-1]) for p in service.get("ports", [])}


def test_services_and_build() -> None:
    stack = compose()
    assert set(stack["services"]) == SERVICES
    build = stack["services"]["gradsentry"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO and (context / "pyproject.toml").is_file()
    dockerfile = context / build["dockerfile"]
    assert dockerfile == REPO / "Dockerfile" and dockerfile.is_file()
    declared_args = set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), re.MULTILINE))
    assert set(build.get("args", {})) <= declared_args, "build args the Dockerfile lacks"
    declared = set(stack.get("volumes") or {})
    for name, service in stack["services"].items():
        assert "image" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: undeclared volume {source}"


def test_stopping_the_stack_lets_gradsentry_drain() -> None:
    """compose's stop timeout must outlast the server's drain, or calls are cut off."""
    service = compose()["services"]["gradsentry"]
    grace = float(service["environment"]["GRADSENTRY_GRACE_SECONDS"])
    period = service["stop_grace_period"]
    assert period.endswith("s") and float(period[:-1]) > grace


def test_every_mounted_file_exists() -> None:
    mounted = 0
    for name, service in compose()["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.is_relative_to(DEPLOY), f"{name}: mounts {source} outside deploy/"
            mounted += 1
    assert mounted >= 4


def test_prometheus_config_is_valid_and_wired() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    services = compose()["services"]
    prometheus = services["prometheus"]
    (flag,) = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    config_path = flag.split("=", 1)[1]
    assert host_path(prometheus, config_path) == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # Rule files resolve against the config file's directory inside the container.
    rule_files = [
        host_path(prometheus, posixpath.join(posixpath.dirname(config_path), name))
        for name in config["rule_files"]
    ]
    assert rule_files == [ALERTS]
    # The gradsentry job scrapes the service where its metrics endpoint listens.
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.rsplit(":", 1)
    gradsentry = services["gradsentry"]
    env = gradsentry["environment"]
    assert host == "gradsentry"
    assert int(port) == int(env.get("GRADSENTRY_METRICS_PORT", ServerConfig.metrics_port))
    assert int(port) in published(gradsentry)
    assert env["GRADSENTRY_HOST"] == "0.0.0.0"  # reachable from the other containers
    (torchserve,) = [j for j in config["scrape_configs"] if j["job_name"] == "torchserve"]
    (ts_target,) = torchserve["static_configs"][0]["targets"]
    assert ts_target.split(":")[0] == "torchserve"
    assert int(ts_target.split(":")[1]) in published(services["torchserve"])


def test_prometheus_config_check_catches_errors(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["scrape_configs"][0]["scrape_interval"] = "often"
    broken = tmp_path / "prometheus.yml"
    broken.write_text(yaml.safe_dump(config))
    for name in config["rule_files"]:
        (tmp_path / name).write_text((PROMETHEUS_CONFIG.parent / name).read_text())
    result = promtool("check", "config", str(broken))
    assert result.returncode != 0 and "often" in result.stdout + result.stderr


def test_grafana_provisioning() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    assert host_path(grafana, "/etc/grafana/provisioning") == PROVISIONING.resolve()
    # The data source: the prometheus service, on the port Prometheus listens on.
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert 9090 in published(services["prometheus"])
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]  # the dashboard's data source picker finds it
    # The dashboard provider reads the directory where compose mounts the dashboard.
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "gradsentry.yaml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    shown = [
        target
        for target, src in bind_mounts(grafana).items()
        if src == DASHBOARD and posixpath.dirname(target) == folder
    ]
    assert len(shown) == 1 and shown[0].endswith(".json")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == DASHBOARD
