"""The committed adaptive-attack reports (docs/adaptive-DEMO.json) carry every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detectors.adaptive.report import check_report

DOCS = Path(__file__).resolve().parents[2] / "docs"
REPORTS = sorted(DOCS.glob("adaptive-*.json"))
#: The issue's ε per demo: MNIST up to 0.3, the others up to 0.2.
REQUIRED_EPS = {"mnist": {0.05, 0.1, 0.2, 0.3}}
DEFAULT_EPS = {0.05, 0.1, 0.2}


def test_the_mnist_report_is_committed() -> None:
    assert DOCS / "adaptive-mnist.json" in REPORTS


@pytest.mark.parametrize("path", REPORTS, ids=[p.stem for p in REPORTS])
def test_a_committed_report_is_complete(path: Path) -> None:
    report = json.loads(path.read_text(encoding="utf-8"))
    assert path.stem == f"adaptive-{report['demo']}"
    assert check_report(report) == []
    assert report["n"] == 500
    assert REQUIRED_EPS.get(report["demo"], DEFAULT_EPS) <= set(report["config"]["eps"])
    assert {"gradsentry", "mahalanobis", "knn"} <= set(report["config"]["targets"])
    assert report["command"].startswith(f"gradsentry attack --demo {report['demo']}")
    index = {(r["detector"], r["eps"], r["attack"], r["lambda"]): r for r in report["results"]}
    for (det, eps, _attack, lam), row in index.items():
        if lam == "best":  # the attacker's best never does worse than the oblivious PGD
            assert row["success"] >= index[(det, eps, "oblivious", None)]["success"]
    # The write-up quotes this report and links it.
    assert path.name in (DOCS / "adaptive.md").read_text(encoding="utf-8")
