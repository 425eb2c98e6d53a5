"""The alert rules (deploy/prometheus/alerts.yaml) with real tools: ``promtool check rules``,
``promtool test rules`` on alerts.test.yaml (every alert fires in one case and stays silent
in another, and each case really depends on the rule: rewriting a rule to always or never
fire breaks its cases), promql-parser and the server's metric names, the chart's copy, and a
real Prometheus evaluating the rules against a real sidecar."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.conftest import (
    ALERTS,
    ALERTS_TEST,
    CHART,
    SCRAPE_SERIES,
    LiveStack,
    exported_metric_names,
    load_rules,
    metric_names,
)
from tests.prometheus_helpers import JOB, promtool, wait_for

SEVERITIES = {"critical", "warning"}
ALWAYS = "vector(1)"  # an alert expression that always fires
NEVER = "vector(1) < 0"  # one that never does


def alert_names() -> list[str]:
    return [rule["alert"] for rule in load_rules()]


def unit_tests() -> list[dict[str, Any]]:
    return yaml.safe_load(ALERTS_TEST.read_text())["tests"]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = alert_names()
    assert len(names) == len(set(names)) >= 5
    assert yaml.safe_load(ALERTS_TEST.read_text())["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in unit_tests():
        evaluations: dict[str, list[bool]] = {}
        for check in case.get("alert_rule_test", []):
            assert check["alertname"] in names, f"{case['name']}: unknown {check['alertname']}"
            evaluations.setdefault(check["alertname"], []).append(bool(check["exp_alerts"]))
        for name, fired in evaluations.items():
            if any(fired):
                firing.add(name)
            else:  # a case where the alert is expected silent at every evaluation
                silent.add(name)
    assert set(names) - firing == set(), "alerts never expected to fire"
    assert set(names) - silent == set(), "alerts without a case where they stay silent"


def failing_alerts(output: str) -> set[str]:
    """Alert names of the failed checks in ``promtool test rules`` output."""
    return {
        line.split("alertname:")[1].split(",")[0].strip()
        for line in output.splitlines()
        if "alertname:" in line
    }


@pytest.mark.parametrize("name", alert_names())
def test_unit_tests_depend_on_each_rule(name: str, tmp_path: Path) -> None:
    """With the rule rewritten to always fire, a silent case of it fails; rewritten to never
    fire, a firing case fails; and no other alert's cases are affected."""
    groups = yaml.safe_load(ALERTS.read_text())
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    for expr, expected in ((ALWAYS, "exp:[]"), (NEVER, "got:[]")):
        mutated = yaml.safe_load(ALERTS.read_text())
        (rule,) = [r for g in mutated["groups"] for r in g["rules"] if r.get("alert") == name]
        rule["expr"] = expr
        (tmp_path / ALERTS.name).write_text(yaml.safe_dump(mutated, sort_keys=False))
        result = promtool("test", "rules", str(tmp_path / ALERTS_TEST.name))
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{name} as {expr!r}: the unit tests still pass"
        assert failing_alerts(output) == {name}, output
        assert expected in output.replace(" ", "").replace("\n", ""), output
    assert groups == yaml.safe_load(ALERTS.read_text())  # the real file is untouched


def test_rules_are_labelled_and_annotated() -> None:
    for rule in load_rules():
        name = rule["alert"]
        assert name.startswith("Gradsentry"), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        assert all(text.strip() for text in rule["annotations"].values()), name
        assert rule.get("for"), f"{name}: fires on a single evaluation"
        assert f'job="{JOB}"' in rule["expr"], f"{name}: does not select the gradsentry job"


def test_rules_parse_and_use_exported_metrics() -> None:
    exported = exported_metric_names() | SCRAPE_SERIES
    for rule in load_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: not exported: {names - exported}"
    # The queue alert needs the capacity gauge the server exports beside the depth.
    assert {"gradsentry_queue_depth", "gradsentry_queue_capacity"} <= exported


# --- The chart's copy -------------------------------------------------------------------------


def test_chart_ships_these_rules(tmp_path: Path) -> None:
    copy = CHART / "files" / "prometheus-rules.yaml"
    assert copy.read_bytes() == ALERTS.read_bytes(), (
        "helm/gradsentry/files/prometheus-rules.yaml differs from deploy/prometheus/alerts.yaml:"
        " copy the latter over the former"
    )
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render({"prometheusRule": {"enabled": True}}, name="demo", namespace="ml")
    (rule,) = [
        doc
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "PrometheusRule"
    ]
    # The same rules, selecting the job the Prometheus Operator gives the release's Service.
    expected = ALERTS.read_text().replace(f'job="{JOB}"', 'job="demo-gradsentry", namespace="ml"')
    assert rule["spec"]["groups"] == yaml.safe_load(expected)["groups"]
    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = promtool("check", "rules", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr


# --- Against a real Prometheus ----------------------------------------------------------------


def test_prometheus_evaluates_every_rule(live: LiveStack) -> None:
    """deploy/prometheus/prometheus.yml loads the rules; each evaluates without error against
    the live sidecar, and none is even pending while it serves after demo traffic, except
    the latency alert, which a loaded test machine may legitimately start."""

    def evaluated() -> dict[str, dict[str, Any]] | None:
        groups = live.prometheus.get("/api/v1/rules", type="alert")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        done = all(r.get("lastEvaluation", "").startswith("20") for r in rules.values())
        return rules if rules and done else None

    rules = wait_for("every alert rule evaluated", evaluated, live.prometheus.log)
    assert set(rules) == set(alert_names())
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        allowed = {"inactive", "pending"} if name == "GradsentryLatencyHigh" else {"inactive"}
        assert rule["state"] in allowed, f"{name} is {rule['state']} on a healthy sidecar"
