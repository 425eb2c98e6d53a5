"""The demo's quality bars, read off a report (``Report.to_dict()`` / report.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Bar:
    """One bar: what is measured, its value, the target, and whether it is met."""

    name: str
    value: float
    target: str
    met: bool


def _mean_auroc(report: dict[str, Any], method: str, keep) -> float:
    vals = [s["metrics"][method]["auroc"] for s in report["sets"] if keep(s)]
    return float(np.mean(vals))


def check_bars(report: dict[str, Any]) -> list[Bar]:
    """Every bar of the demo, in the order the README lists them."""
    primary = report["primary"]
    baselines = [m for m in report["methods"] if m != primary]
    fam = {
        "adversarial": lambda s: s["family"] == "adversarial",
        "corrupted s5": lambda s: s["family"] == "corrupted" and s["name"].endswith(" s5"),
        "ood": lambda s: s["family"] == "ood",
    }
    bars = [
        Bar(
            "adversarial sets, mean AUROC",
            _mean_auroc(report, primary, fam["adversarial"]),
            ">= 0.97",
            False,
        ),
        Bar(
            "15 corruptions at severity 5, mean AUROC",
            _mean_auroc(report, primary, fam["corrupted s5"]),
            ">= 0.97",
            False,
        ),
        Bar("OOD sets, mean AUROC", _mean_auroc(report, primary, fam["ood"]), ">= 0.99", False),
        Bar(
            "unseen harmful sets, mean AUROC",
            _mean_auroc(report, primary, lambda s: not s["seen"] and s["harmful"]),
            ">= 0.985",
            False,
        ),
        Bar(
            "all unseen sets, mean AUROC",
            _mean_auroc(report, primary, lambda s: not s["seen"]),
            ">= 0.92",
            False,
        ),
    ]
    bars = [Bar(b.name, b.value, b.target, b.value >= float(b.target[3:])) for b in bars]
    for family in ("adversarial", "corrupted", "ood"):

        def keep(s: dict[str, Any], family: str = family) -> bool:
            return s["family"] == family

        ours = _mean_auroc(report, primary, keep)
        best = max(baselines, key=lambda m: _mean_auroc(report, m, keep))
        margin = ours - _mean_auroc(report, best, keep)
        bars.append(
            Bar(f"{family}: margin over the best baseline ({best})", margin, "> 0", margin > 0)
        )
    bars += _kind_bar(report)
    return bars + _fpr_bar(report, 0.015)


def _kind_bar(report: dict[str, Any]) -> list[Bar]:
    """The kind bar (≥ 90% of flagged unseen inputs get their family), when reported."""
    confusion = report.get("kind_confusion")
    if confusion is None or confusion["accuracy"] is None:
        return []
    accuracy = confusion["accuracy"]
    name = "kind: flagged inputs of unseen sets attributed to their true family"
    return [Bar(name, accuracy, ">= 0.90", accuracy >= 0.90)]


def _fpr_bar(report: dict[str, Any], tolerance: float) -> list[Bar]:
    """Achieved clean false-positive rate within ``tolerance`` of the target, when reported."""
    meta = report["meta"]
    if "clean_false_positive_rate" not in meta:
        return []
    rate, target = meta["clean_false_positive_rate"], meta["target_fpr"]
    gap = rate - target
    return [
        Bar(
            f"clean test FPR {rate:.2%} vs target {target:.0%}: gap",
            gap,
            f"|gap| <= {tolerance:g}",
            abs(gap) <= tolerance,
        )
    ]


def format_bars(bars: list[Bar]) -> str:
    """A markdown table of the bars."""
    rows = ["| bar | value | target | met |", "|---|---|---|---|"]
    rows += [
        f"| {b.name} | {b.value:.4f} | {b.target} | {'yes' if b.met else '**no**'} |" for b in bars
    ]
    return "\n".join(rows)


def _margin_bar(report: dict[str, Any], what: str, keep, at_least: float) -> Bar:
    """gradsentry's mean AUROC over ``keep``'s sets minus the best baseline's there."""
    primary = report["primary"]
    baselines = [m for m in report["methods"] if m != primary]
    best = max(baselines, key=lambda m: _mean_auroc(report, m, keep))
    margin = _mean_auroc(report, primary, keep) - _mean_auroc(report, best, keep)
    return Bar(
        f"{what}: mean AUROC margin over the best baseline ({best})",
        margin,
        f">= {at_least}",
        margin >= at_least,
    )


def check_fashion_bars(report: dict[str, Any]) -> list[Bar]:
    """The Fashion-MNIST benchmark's bars: a ≥ 1-point AUROC margin over the best baseline
    per family (corruptions at severity 5) and over every unseen set, MNIST digits as
    OOD ≥ 0.99, unseen harmful sets ≥ 0.98, kind attribution ≥ 90% on unseen sets, and
    the clean false-positive rate within 1 point of the target."""
    primary = report["primary"]
    bars = [
        _margin_bar(report, "adversarial sets", lambda s: s["family"] == "adversarial", 0.01),
        _margin_bar(
            report,
            "15 corruptions at severity 5",
            lambda s: s["family"] == "corrupted" and s["name"].endswith(" s5"),
            0.01,
        ),
        _margin_bar(report, "OOD sets", lambda s: s["family"] == "ood", 0.01),
        _margin_bar(report, "all unseen sets", lambda s: not s["seen"], 0.01),
    ]
    digits = _mean_auroc(report, primary, lambda s: s["name"] == "mnist digits")
    bars.append(Bar("MNIST digits as OOD, AUROC", digits, ">= 0.99", digits >= 0.99))
    harmful = _mean_auroc(report, primary, lambda s: not s["seen"] and s["harmful"])
    bars.append(Bar("unseen harmful sets, mean AUROC", harmful, ">= 0.98", harmful >= 0.98))
    bars += _kind_bar(report)
    return bars + _fpr_bar(report, 0.01)
