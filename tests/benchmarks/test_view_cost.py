"""``benchmarks/view_cost.py`` runs end to end on the Fashion-MNIST demo, and the views
only add their columns (the script checks the rest of the vector is unchanged)."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.scripts import run_script


def test_view_cost_runs_on_the_fashion_demo(tmp_path: Path) -> None:
    out = tmp_path / "views.json"
    report = run_script(
        "view_cost.py", "--models", "fashion", "--repeats", "1", "--json", str(out), report=out
    )
    fashion = report["models"]["fashion"]
    assert fashion["views"] == ["median", "stretch"] and fashion["columns_added"] == 2
    assert fashion["seconds"]["features"] > 0 and fashion["seconds"]["features+views"] > 0
