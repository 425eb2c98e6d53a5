"""The Grafana dashboard (deploy/grafana/dashboard.json) with real tools: Grafana's own
TypeScript types (@grafana/schema, checked by tsc), promql-parser for every query, and a
real Prometheus scraping a real sidecar after demo traffic, where every panel's queries
must return data."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import (
    CHART,
    DASHBOARD,
    SCRAPE_SERIES,
    TYPECHECK,
    LiveStack,
    exported_metric_names,
    metric_names,
)
from tests.prometheus_helpers import JOB, send_demo_traffic, wait_for

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# $__rate_interval is Grafana's (at least 4 scrape intervals); 1 m covers the whole test.
RATE_INTERVAL = "1m"
# The baseline panel averages the previous day ending 10 minutes ago, which a Prometheus
# started seconds ago has no data for: the live test evaluates the same expressions over the
# last minute ending 5 s ago. Only these ranges change; everything else is queried verbatim.
SHORT_RANGES = {"[1d:5m] offset 10m": "[1m:5s] offset 5s"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row (rows here are open: their panels are top-level)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of the dashboard."""
    return [(p["title"], t) for p in panels(dashboard) for t in p["targets"]]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def substitute(text: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation ($name, ${name}, ${name:fmt}, [[name]])."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        assert name in values, f"unknown dashboard variable ${name} in {text!r}"
        return values[name]

    return GRAFANA_VARIABLE.sub(one, text)


def variable_values(dashboard: dict[str, Any], job: str) -> dict[str, str]:
    """What Grafana puts in for each variable: ``job``, and "All" (allValue) for the rest."""
    values = {"__rate_interval": RATE_INTERVAL}
    for name, var in variables(dashboard).items():
        if name == "job":
            values[name] = job
        elif var["type"] == "query":
            assert var.get("includeAll") and var.get("allValue"), f"${name}: no All value"
            values[name] = var["allValue"]
    return values


def substitute_static(expr: str) -> str:
    """``expr`` with the values Grafana would use for the job "gradsentry"."""
    return substitute(expr, variable_values(load(), JOB))


def grid_cells(pos: dict[str, int]) -> set[tuple[int, int]]:
    """The grid cells a panel's gridPos covers."""
    xs = range(pos["x"], pos["x"] + pos["w"])
    return {(x, y) for x in xs for y in range(pos["y"], pos["y"] + pos["h"])}


def family(sample: str) -> str:
    """gradsentry_score_bucket -> gradsentry_score (a sample name's metric family)."""
    return re.sub(r"_(bucket|sum|count|total|created|info)$", "", sample)


def typecheck(path: Path) -> subprocess.CompletedProcess[str]:
    """``node check.mjs path`` in the npm project of deploy/grafana/typecheck."""
    node = shutil.which("node")
    assert node, "node not found: `make system-deps` installs nodejs and npm"
    assert (TYPECHECK / "node_modules" / "typescript").is_dir(), (
        "deploy/grafana/typecheck has no node_modules: `make test` runs npm ci there"
    )
    return subprocess.run(
        [node, "check.mjs", str(path)],
        cwd=TYPECHECK,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- Grafana's own types --------------------------------------------------------------------


def test_npm_project_pins_what_is_installed() -> None:
    package = json.loads((TYPECHECK / "package.json").read_text())
    lock = json.loads((TYPECHECK / "package-lock.json").read_text())
    pinned = package["devDependencies"]
    assert set(pinned) == {"@grafana/schema", "typescript"}
    for name, version in pinned.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version}: pin an exact version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        installed = TYPECHECK / "node_modules" / name / "package.json"
        assert installed.is_file(), "deploy/grafana/typecheck: run `make test` (npm ci)"
        assert json.loads(installed.read_text())["version"] == version, f"stale {name}: npm ci"


def test_dashboard_type_checks_against_grafana_schema() -> None:
    result = typecheck(DASHBOARD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_type_check_rejects_a_broken_dashboard(tmp_path: Path) -> None:
    broken = load()
    first, second = panels(broken)[:2]
    first["gridPos"]["h"] = "4"  # a string where Grafana wants a number
    first["fieldConfig"]["defaults"]["color"]["mode"] = "rainbow"  # not a colour mode
    second["gridPoss"] = second.pop("gridPos")  # a misspelt key
    variables(broken)["job"]["hide"] = 7  # VariableHide is 0..3
    path = tmp_path / "dashboard.json"
    text = json.dumps(broken, indent=2)
    path.write_text(text)
    result = typecheck(path)
    assert result.returncode != 0, result.stdout
    lines = text.splitlines()

    def reported(pattern: str, message: str) -> None:
        line = next(i for i, s in enumerate(lines, 1) if re.search(pattern, s))
        assert f"{path}({line}," in result.stdout and message in result.stdout, result.stdout

    reported(r'"h": "4"', "Type 'string' is not assignable to type 'number'")
    reported(r'"mode": "rainbow"', "Type '\"rainbow\"' is not assignable")
    reported(r'"gridPoss"', "'\"gridPoss\"' does not exist")
    reported(r'"hide": 7', "Type '7' is not assignable to type '0 | ")


def test_type_check_rejects_a_dashboard_without_schema_version(tmp_path: Path) -> None:
    broken = load()
    del broken["schemaVersion"]
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(broken, indent=2))
    result = typecheck(path)
    assert result.returncode != 0
    assert "Property 'schemaVersion' is missing" in result.stdout, result.stdout


# --- Content and layout ---------------------------------------------------------------------


def test_chart_ships_this_dashboard() -> None:
    shipped = CHART / "files" / "dashboard.json"
    assert shipped.read_bytes() == DASHBOARD.read_bytes(), (
        "helm/gradsentry/files/dashboard.json differs from deploy/grafana/dashboard.json: "
        "copy the latter over the former"
    )


def test_layout_is_readable() -> None:
    dashboard = load()
    assert dashboard["uid"] == "gradsentry" and dashboard["title"] == "gradsentry"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    rows = 0
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = grid_cells(pos)
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            rows += 1
            assert pos["w"] == 24 and panel["title"], panel
            continue
        assert rows, f"{panel['title']} is above the first row"
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        if panel["type"] in {"timeseries", "stat"}:
            assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']}: no unit"
        if panel["type"] == "timeseries":
            assert panel["options"]["legend"]["showLegend"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["legendFormat"], panel["title"]
    assert rows >= 5
    datasource = variables(dashboard)["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")


def test_panels_cover_what_operators_need() -> None:
    dashboard = load()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for panel in panels(dashboard):
        by_type.setdefault(panel["type"], []).append(panel)
    exprs = [t["expr"] for _, t in targets(dashboard)]
    (heatmap,) = by_type["heatmap"]
    (heat,) = heatmap["targets"]
    assert heat["format"] == "heatmap" and "gradsentry_score_bucket" in heat["expr"]
    assert heatmap["options"]["calculate"] is False  # Prometheus buckets, not Grafana's
    (info,) = by_type["table"]
    assert "gradsentry_model_info" in info["targets"][0]["expr"]
    # Per-stage and overall p50 / p99, per verdict kind, against the alert's baseline.
    for q in ("0.5", "0.99"):
        assert any(f"histogram_quantile({q}, sum by (le, stage)" in e for e in exprs), q
        assert any(f"histogram_quantile({q}, sum by (le, method)" in e for e in exprs), q
    assert any("sum by (kind)" in e and 'verdict="FLAGGED"' in e for e in exprs)
    assert any("[1d:5m] offset 10m" in e for e in exprs)
    used = {n for e in exprs for n in metric_names(substitute_static(e))}
    assert "up" in used  # the serving state
    # Every metric family the server exports under its namespace is on the dashboard.
    families = {family(n) for n in exported_metric_names() if n.startswith("gradsentry_")}
    assert families - {family(n) for n in used} == set()


def test_every_query_parses_and_uses_exported_metrics() -> None:
    dashboard = load()
    exported = exported_metric_names() | SCRAPE_SERIES
    queries = [(title, t["expr"]) for title, t in targets(dashboard)]
    for name, var in variables(dashboard).items():
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"])
            assert match and match["selector"], f"${name}: {var['query']}"
            queries.append((f"${name}", match["selector"]))
    assert len(queries) >= 25
    for title, expr in queries:
        promql = substitute_static(expr)
        try:
            names = metric_names(promql)
        except ValueError as exc:
            pytest.fail(f"{title}: {promql!r} does not parse: {exc}")
        assert names, f"{title}: {promql!r} selects no metric"
        assert names <= exported, f"{title}: not exported by the server: {names - exported}"


def test_promql_parser_refuses_a_broken_query() -> None:
    with pytest.raises(ValueError):
        metric_names("sum(rate(gradsentry_requests_total[1m])")
    assert metric_names('gradsentry_score_bucket{le="1"} + {__name__="up"}') == {
        "gradsentry_score_bucket",
        "up",
    }


# --- Against a real Prometheus ----------------------------------------------------------------


def finite(rows: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(row["value"][1])) for row in rows)


def test_variables_find_the_sidecar(live: LiveStack) -> None:
    dashboard = load()
    instance = f"127.0.0.1:{live.server.metrics_port}"
    values = variable_values(dashboard, JOB)
    found: dict[str, set[str]] = {}
    for name, var in variables(dashboard).items():
        if var["type"] != "query":
            continue
        match = LABEL_VALUES.match(var["query"])
        assert match is not None
        selector = substitute(match["selector"], values)
        path = f"/api/v1/label/{match['label']}/values"

        def label_values(path: str = path, selector: str = selector) -> list[str] | None:
            return live.prometheus.get(path, **{"match[]": selector}) or None

        found[name] = set(wait_for(f"${name} values", label_values, live.prometheus.log))
    assert found == {"job": {JOB}, "instance": {instance}}


def test_every_panel_query_returns_data(live: LiveStack) -> None:
    # Traffic now, not only when the stack started: panels show rates over the last minute,
    # and in random test order minutes may pass between the stack's start and this test.
    traffic = send_demo_traffic(live.server.port)
    assert sum(traffic.values()) >= 12, traffic
    flagged = {k.split()[0] for k, n in traffic.items() if k.endswith("FLAGGED") and n}
    assert flagged >= {"adversarial", "ood"}, traffic  # the demo detector's easy kinds
    dashboard = load()
    values = variable_values(dashboard, JOB)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{live.server.metrics_port}/metrics", timeout=10
    ) as reply:
        scraped = {
            s.name
            for family_ in text_string_to_metric_families(reply.read().decode())
            for s in family_.samples
        }
    for title, target in targets(dashboard):
        promql = substitute(target["expr"], values)
        for long, short in SHORT_RANGES.items():
            promql = promql.replace(long, short)
        assert "offset 10m" not in promql and "[1d" not in promql, promql
        assert metric_names(promql) - SCRAPE_SERIES <= scraped, f"{title}: not on /metrics"

        def answered(q: str = promql) -> list[dict[str, Any]] | None:
            rows = live.prometheus.query(q)
            return rows if rows and finite(rows) else None

        what = f"{title} [{target['refId']}]: data for {promql}"
        assert wait_for(what, answered, live.prometheus.log)
    # The FLAGGED kinds the sidecar saw are on the flagged-ratio-by-kind panel.
    (by_kind,) = [t for title, t in targets(dashboard) if title == "Flagged ratio by kind"]
    rows = live.prometheus.query(substitute(by_kind["expr"], values))
    assert flagged <= {row["metric"]["kind"] for row in rows}


def test_substitution_covers_only_the_baseline_ranges() -> None:
    changed = [
        title
        for title, target in targets(load())
        if any(long in target["expr"] for long in SHORT_RANGES)
    ]
    assert changed and set(changed) == {"Flagged ratio against its baseline"}
