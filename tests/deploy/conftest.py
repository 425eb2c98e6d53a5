"""Paths of the observability assets, the metric names the server exports, PromQL helpers,
and one live stack shared by the dashboard and alert tests: the demo sidecar after demo
traffic, scraped every second by a real Prometheus running deploy/prometheus's config and
alert rules."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from service.server import SentryServer
from tests.prometheus_helpers import (
    JOB,
    Prometheus,
    running_prometheus,
    send_demo_traffic,
    start_sidecar,
    target_up,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
TYPECHECK = DEPLOY / "grafana" / "typecheck"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts.test.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "compose.yaml"
CHART = REPO / "helm" / "gradsentry"
# Series Prometheus itself adds for every target, not exported by the server.
SCRAPE_SERIES = frozenset({"up"})
# Sample-name suffixes of each metric type in the text exposition format.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_metric_names() -> frozenset[str]:
    """Every sample name a server's metrics registry can expose, labelled metrics included
    (they have no samples before their first use, so names come from the families)."""
    registry = Metrics(CollectorRegistry()).registry
    return frozenset(
        family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]
    )


def metric_names(expr: str) -> set[str]:
    """Names of the metrics a PromQL expression selects (parsed by promql-parser)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            by_matcher = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            names.update([node.name] if node.name else by_matcher)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def load_rules() -> list[dict[str, Any]]:
    """The alerting rules of deploy/prometheus/alerts.yaml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@dataclass(frozen=True)
class LiveStack:
    """The sidecar after demo traffic, and the Prometheus scraping it."""

    server: SentryServer
    prometheus: Prometheus
    traffic: dict[str, int]


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """deploy/prometheus/prometheus.yml with its alert rules, pointed at the demo sidecar on
    127.0.0.1 with 1 s scrape and rule intervals (TorchServe is not part of it)."""
    with start_sidecar() as server:
        assert server.metrics_port is not None
        root = tmp_path_factory.mktemp("prometheus")
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        for name in config["rule_files"]:  # relative to the config file, as in deploy/
            shutil.copy(PROMETHEUS_CONFIG.parent / name, root / name)
        config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]
        config["scrape_configs"] = [job]
        with running_prometheus(config, root) as prometheus:
            wait_for("the sidecar target is up", lambda: target_up(prometheus), prometheus.log)
            traffic = send_demo_traffic(server.port)
            yield LiveStack(server, prometheus, traffic)
