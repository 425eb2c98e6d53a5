"""``benchmarks/gpu_check.py`` runs end to end on the CPU (``--device cpu --quick``), so the
one-shot device check works the day a GPU is there."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.scripts import run_script

SECTIONS = (
    "environment",
    "placement",
    "device_vs_cpu",
    "batched_vs_alone",
    "precision",
    "probe_cost",
)


def test_the_device_check_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    report = run_script("gpu_check.py", "--device", "cpu", "--quick", "--out", str(out), report=out)
    for name in (*SECTIONS, "sidecar"):
        assert "error" not in report[name], report[name]
    assert report["placement"]["model_parameters"] == ["cpu"]
    assert report["placement"]["detector_device"] == "cpu"
    # The CPU against itself: nothing may differ (the same kernels on the same inputs).
    assert report["device_vs_cpu"]["verdict_flips"] == 0
    assert report["device_vs_cpu"]["max_score_difference"] == 0.0
    assert report["batched_vs_alone"]["prediction_flips"] == 0
    cost = report["probe_cost"]["batch_4"]
    assert cost["probe_s"] > 0 and cost["probe_counts"]["kernels"] > 0
    assert cost["forward_backward_counts"]["kernels"] > 0
    assert set(cost["probe_stage_s"]) == {"forward", "backward"}
    # Half precision on the demo digits: the bounds of tests/probe/test_precision.py.
    for dtype in ("float16", "bfloat16"):
        half = report["precision"][dtype]
        assert half["max_column_relative_feature_difference"] <= 0.15
        assert half["prediction_flips"] == 0
        # The view shifts, absolute: two softmaxes in the model's dtype. bfloat16 keeps 8
        # bits (~4e-3 relative per probability, through a 10-class softmax and its logits);
        # measured 0.014 for bfloat16 and 6e-4 for float16 on the demo digits: 0.1 is 7x that.
        assert half["max_view_shift_difference"] <= 0.1
    assert "numerics" in report["environment"]
    assert report["sidecar"]["batching on"]["errors"] == 0
    assert report["sidecar"]["batching on"]["requests_per_second"] > 0
