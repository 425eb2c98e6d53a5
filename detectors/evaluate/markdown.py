"""Render a ``Report`` as markdown: header, summary tables, one table per family."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detectors.evaluate.report import GroupMean, KindConfusion, Report, SetResult

_FAMILY_TITLES = {
    "adversarial": "Adversarial",
    "corrupted": "Corrupted",
    "ood": "Out-of-distribution",
}


def _pct(x: float | None) -> str:
    """A fraction in [0, 1] as a percentage with one decimal; "n/a" for None."""
    return "n/a" if x is None else f"{100.0 * x:.1f}"


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _auroc_row(label: str, group: GroupMean, methods: Sequence[str]) -> list[str]:
    """Label, number of sets, then each method's mean AUROC; the best in bold."""
    values = [group.metrics[m].auroc for m in methods]
    best = max(values)
    cells = [f"**{_pct(v)}**" if _pct(v) == _pct(best) else _pct(v) for v in values]
    return [_cell(label), str(len(group.sets)), *cells]


def _set_row(r: SetResult, report: Report) -> list[str]:
    p = r.metrics[report.primary]
    if r.wrong_metrics is not None:
        wrong = f"{_pct(r.wrong_metrics[report.primary].auroc)} ({r.n_wrong})"
    else:
        wrong = "n/a" if r.n_wrong is None else f"n/a ({r.n_wrong})"
    return [
        _cell(r.name),
        "seen" if r.seen else "unseen",
        str(r.n),
        _pct(r.accuracy),
        _pct(p.auroc),
        _pct(p.aupr),
        _pct(p.fpr_at_95_tpr),
        _pct(p.detection_accuracy),
        *(_pct(r.metrics[m].auroc) for m in report.methods[1:]),
        wrong,
    ]


def _confusion_lines(conf: KindConfusion, primary: str) -> list[str]:
    """The kind-attribution section: attributed kind vs true family, flagged inputs only."""
    kinds = sorted({k for row in conf.counts.values() for k in row} | set(conf.counts))
    rows = []
    for family, row in conf.counts.items():
        n = sum(row.values())
        rows.append(
            [
                _cell(family),
                str(n),
                *(str(row.get(k, 0)) for k in kinds),
                _pct(conf.family_accuracy(family)),
            ]
        )
    return [
        "## Kind attribution on unseen sets",
        "",
        f"Flagged inputs of the {len(conf.sets)} unseen sets, by true family (rows) and the "
        f"kind {primary} names (columns): {conf.n_flagged} inputs, "
        f"{_pct(conf.accuracy)}% attributed to their true family.",
        "",
        *_table(["True family", "Flagged", *kinds, "Right %"], rows),
    ]


def render_markdown(report: Report, *, roc_image: str | None = "roc.png") -> str:
    """The report as a markdown document; ``roc_image`` is linked if given."""
    methods = report.methods
    baselines = methods[1:]
    lines = [f"# Evaluation report: {report.primary}", ""]
    for key, value in report.meta.items():
        lines.append(f"- **{_cell(key)}**: {_cell(value)}")
    lines += [
        f"- **clean test inputs**: n = {report.clean_n}, "
        f"classifier accuracy {_pct(report.clean_accuracy)}%",
        f"- **baselines**: {', '.join(baselines) if baselines else 'none'}",
        "",
        'Scores are "higher = more likely challenging"; challenge inputs are the positives, '
        "clean test inputs the negatives. All metrics are percentages. FPR@95 is the "
        "false-positive rate at 95% true-positive rate (lower is better); DetAcc is "
        "max over thresholds of 1 − ½(FPR + FNR). A set is *harmful* when it is OOD or "
        f"the classifier's accuracy on it is below {_pct(report.harmful_accuracy)}%.",
        "",
        "## Summary: mean AUROC per family",
        "",
    ]
    rows = [_auroc_row(_FAMILY_TITLES[f], g, methods) for f, g in report.family_means.items()]
    lines += _table(["Family", "Sets", *methods], rows)
    lines += ["", "## Unseen challenge kinds: mean AUROC", ""]
    groups = [("All unseen sets", report.unseen), ("Unseen harmful sets", report.unseen_harmful)]
    rows = [_auroc_row(label, g, methods) for label, g in groups if g is not None]
    if rows:
        lines += _table(["Group", "Sets", *methods], rows)
    else:
        lines.append("_Every set was seen when the detector was fitted._")
    if roc_image is not None:
        lines += ["", f"![ROC curves per family]({roc_image})"]
    if report.kind_confusion is not None:
        lines += ["", *_confusion_lines(report.kind_confusion, report.primary)]

    header = [
        "Set",
        "Seen",
        "n",
        "Acc",
        f"{report.primary} AUROC",
        "AUPR",
        "FPR@95",
        "DetAcc",
        *(f"{m} AUROC" for m in baselines),
        f"{report.primary} AUROC, wrong only (n wrong)",
    ]
    for family, title in _FAMILY_TITLES.items():
        results = [r for r in report.sets if r.family == family]
        if not results:
            continue
        lines += ["", f"## {title}", ""]
        lines += _table(header, [_set_row(r, report) for r in results])
    lines += [
        "",
        '"Wrong only" compares the set\'s misclassified inputs with all clean inputs '
        "(n/a for OOD sets and when fewer than 2 inputs are misclassified).",
    ]
    return "\n".join(lines) + "\n"
