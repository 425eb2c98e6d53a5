"""ROC figure of a report: one panel per family.

Each panel shows the primary method's ROC on every set of the family (thin solid
lines) and the family-pooled ROC of every method (thick black for the primary
method, thick broken lines for the baselines). Drawn on a bare Agg canvas, so the
caller's pyplot state and backend are left alone.
"""

from __future__ import annotations

import io
from itertools import cycle
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from detectors.evaluate.report import Report, RocCurve

_TITLES = {"adversarial": "Adversarial", "corrupted": "Corrupted", "ood": "Out-of-distribution"}
# Per-set curves: 20 distinguishable colours.
_SET_COLOURS = (
    *(f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink")),
    *(f"tab:{c}" for c in ("gray", "olive", "cyan")),
    *("navy", "darkorange", "darkgreen", "firebrick", "indigo", "sienna", "orchid"),
    *("dimgray", "darkkhaki", "teal"),
)
_POOLED_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)))
_POOLED_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive")
# A family with more sets than colours draws them unlabelled in grey: beyond that a
# legend stops being readable (the markdown tables carry every set's numbers).
_MAX_LABELLED_SETS = len(_SET_COLOURS)
_LEGEND_ROWS = 12  # longer legends wrap into two columns


def render_roc_png(report: Report, *, dpi: int = 110) -> bytes:
    """The ROC figure as PNG bytes (one panel per family present in ``report``)."""
    families = list(report.curves.pooled)
    if not families:
        raise ValueError("the report has no ROC curves to plot")
    per_family = {
        f: [(r.name, report.curves.per_set[r.name]) for r in report.sets if r.family == f]
        for f in families
    }
    entries = {f: _legend_entries(len(per_family[f]), len(report.methods)) for f in families}
    ncols = {f: 1 if n <= _LEGEND_ROWS else 2 for f, n in entries.items()}
    legend_rows = max(-(-entries[f] // ncols[f]) for f in families) + 1  # + title
    # The legends get their own row of (invisible) axes under the panels, sized to fit.
    fig = Figure(figsize=(5.0 * len(families), 5.0 + 0.22 * legend_rows), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(families), height_ratios=[5.0, 0.22 * legend_rows])
    fig.subplots_adjust(left=0.06, right=0.98, top=0.95, bottom=0.01, wspace=0.25, hspace=0.18)
    for col, family in enumerate(families):
        ax = fig.add_subplot(grid[0, col])
        _plot_sets(ax, per_family[family])
        styles = zip(cycle(_POOLED_STYLES), cycle(_POOLED_COLOURS), strict=False)
        for method in report.methods:
            ls, colour = ("-", "black") if method == report.primary else next(styles)
            curve = report.curves.pooled[family][method]
            ax.plot(
                curve.fpr,
                curve.tpr,
                lw=2.2,
                ls=ls,
                color=colour,
                label=f"{method}, pooled ({100 * curve.auroc:.1f})",
            )
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=(0, (1, 2)))
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            title=_TITLES.get(family, family),
            xlabel="False-positive rate",
            ylabel="True-positive rate",
        )
        ax.grid(alpha=0.3)
        legend_ax = fig.add_subplot(grid[1, col])
        legend_ax.set_axis_off()
        legend_ax.legend(
            *ax.get_legend_handles_labels(),
            title=f"{report.primary} per set; every method pooled (AUROC %)",
            fontsize="small",
            title_fontsize="small",
            frameon=False,
            ncol=ncols[family],
            loc="upper center",
        )
    buf = io.BytesIO()
    # "tight" also keeps a legend that outgrew its estimated row inside the image.
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _legend_entries(n_sets: int, n_methods: int) -> int:
    """Legend lines of one panel: one per labelled set (or one for all) + one per method."""
    return (n_sets if n_sets <= _MAX_LABELLED_SETS else 1) + n_methods


def _plot_sets(ax: Axes, per_set: list[tuple[str, RocCurve]]) -> None:
    """The primary method's ROC on each set: labelled if few, grey and pooled if many."""
    if len(per_set) <= _MAX_LABELLED_SETS:
        for (name, curve), colour in zip(per_set, _SET_COLOURS, strict=False):
            ax.plot(
                curve.fpr,
                curve.tpr,
                lw=1.0,
                color=colour,
                alpha=0.85,
                label=f"{name} ({100 * curve.auroc:.1f})",
            )
        return
    for i, (_, curve) in enumerate(per_set):
        label = f"each of {len(per_set)} sets" if i == 0 else None
        ax.plot(curve.fpr, curve.tpr, lw=0.7, color="0.55", alpha=0.5, label=label)
