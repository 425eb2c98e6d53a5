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
    confusion = report.get("kind_confusion")
    if confusion is not None and confusion["accuracy"] is not None:
        bars.append(
            Bar(
                "kind: flagged inputs of unseen sets attributed to their true family",
                confusion["accuracy"],
                ">= 0.90",
                confusion["accuracy"] >= 0.90,
            )
        )
    meta = report["meta"]
    if "clean_false_positive_rate" in meta:
        gap = meta["clean_false_positive_rate"] - meta["target_fpr"]
        bars.append(
            Bar(
                f"clean test FPR {meta['clean_false_positive_rate']:.2%} vs target "
                f"{meta['target_fpr']:.0%}: gap",
                gap,
                "|gap| <= 0.015",
                abs(gap) <= 0.015,
            )
        )
    return bars


def format_bars(bars: list[Bar]) -> str:
    """A markdown table of the bars."""
    rows = ["| bar | value | target | met |", "|---|---|---|---|"]
    rows += [
        f"| {b.name} | {b.value:.4f} | {b.target} | {'yes' if b.met else '**no**'} |" for b in bars
    ]
    return "\n".join(rows)
