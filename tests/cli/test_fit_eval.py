"""``gradsentry fit`` and ``gradsentry eval`` end to end, on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.bundle import model_fingerprint
from detectors.challenges import parse_spec
from detectors.sentry import Sentry
from tests.cli.conftest import EVAL_SETS, FIT_SPECS, MODEL, EvalRun, Run, run_cli


def test_fit_writes_a_bundle_and_prints_a_summary(
    fit_run: tuple[Run, Path], fit_data: Path, digits_model: nn.Module
) -> None:
    result, bundle = fit_run
    assert result.code == 0, result.err
    assert result.err == ""  # --quiet: no progress bars, and no warnings either
    manifest = json.loads((bundle / "manifest.json").read_text())
    for head in manifest["heads"].values():
        assert (bundle / head["file"]).is_file()
    assert manifest["model_fingerprint"] == model_fingerprint(digits_model)
    assert manifest["fit_summary"]["data"] == str(fit_data)
    assert manifest["fit_summary"]["n_clean"] == 200
    assert manifest["fit_summary"]["n_stats"] == 300  # --stats-data was used
    assert [c["spec"] for c in manifest["fit_summary"]["challenges"]] == [
        parse_spec(s).spec for s in FIT_SPECS
    ]
    assert manifest["kinds"] == ["adversarial", "ood"]
    assert manifest["target_fpr"] == 0.1
    # --view median: the prediction's shift on the view is the last column.
    assert manifest["fit_summary"]["views"] == ["median"]
    assert manifest["feature_spec"]["views"] == ["median"]
    assert manifest["feature_schema"][-1]["name"] == "view/median/shift"
    # One summary line naming the bundle, the detector and its calibration.
    (line,) = result.out.strip().splitlines()
    assert line.startswith(f"bundle written to {bundle}: ")
    assert f"on {len(manifest['feature_schema'])} features" in line
    assert f"threshold {manifest['threshold']:.4f}" in line
    assert "target FPR 10.0%" in line


def test_fit_overwrite_replaces_an_existing_bundle(
    bundle: Path, weights: Path, fit_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    old = json.loads((out / "manifest.json").read_text())
    result = run_cli(
        "fit", "--model", MODEL, "--weights", weights, "--data", fit_data,
        "--challenge", "ood:source=gaussian", "--strategy", "binary", "--target-fpr", "0.1",
        "--out", out, "--overwrite", "--quiet",
    )  # fmt: skip
    assert result.code == 0, result.err
    new = json.loads((out / "manifest.json").read_text())
    assert new["strategy"] == "binary" and new["kinds"] == ["ood"]
    assert new["fit_summary"]["challenges"] == [{"spec": "ood:source=gaussian", "kind": "ood"}]
    # Only the new bundle's files remain, and no temporary or backup siblings.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", *(h["file"] for h in new["heads"].values())]
    )
    assert sorted(old["heads"]) != sorted(new["heads"])
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_the_bundle_serves_the_model_it_was_fitted_for(
    bundle: Path, digits_model: nn.Module, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    sentry = Sentry.load(digits_model, bundle)
    clean = torch.from_numpy(digits[0][1100:1140])
    noise = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # Fitted on uniform-noise OOD: fresh noise scores far above fresh clean digits.
    assert sentry.check(noise).score.min() > np.median(sentry.check(clean).score)


def test_eval_writes_markdown_plot_and_json(eval_run: EvalRun) -> None:
    result = eval_run.run
    assert result.code == 0, result.err
    markdown = eval_run.report / "report.md"
    roc = eval_run.report / "roc.png"
    assert markdown.is_file() and eval_run.json.is_file()
    assert roc.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "roc.png" in markdown.read_text()
    assert result.out.strip() == f"report written: {markdown}, {roc}, {eval_run.json}"
    # --json put the document where asked, not beside the markdown.
    assert not (eval_run.report / "report.json").exists()


def test_eval_json_has_per_set_metrics_and_seen_flags(eval_run: EvalRun) -> None:
    doc = json.loads(eval_run.json.read_text())
    assert doc["primary"] == "gradsentry"
    assert doc["methods"] == ["gradsentry", "msp", "energy", "mahalanobis"]
    assert doc["clean"]["n"] == 60
    sets = {s["name"]: s for s in doc["sets"]}
    assert list(sets) == [name for _, name, _ in EVAL_SETS]
    for _, name, seen in EVAL_SETS:
        entry = sets[name]
        assert entry["seen"] is seen, name
        assert entry["n"] == 60
        assert set(entry["metrics"]) == set(doc["methods"])
        for method, metrics in entry["metrics"].items():
            assert set(metrics) == {"auroc", "aupr", "fpr_at_95_tpr", "detection_accuracy"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values()), (name, method)
    assert sets["noise"]["family"] == "corrupted"
    assert sets["ood:source=gaussian"]["accuracy"] is None
    assert 0.0 <= sets["weak"]["accuracy"] <= 1.0
    assert doc["unseen"]["sets"] == [name for _, name, seen in EVAL_SETS if not seen]
    # The detector works on what it was fitted on.
    assert sets["fgsm:eps=0.2"]["metrics"]["gradsentry"]["auroc"] > 0.9
    assert sets["uniform"]["metrics"]["gradsentry"]["auroc"] > 0.9


def test_eval_markdown_lists_every_set_with_its_seen_flag(eval_run: EvalRun) -> None:
    text = (eval_run.report / "report.md").read_text()
    for _, name, seen in EVAL_SETS:
        rows = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
        assert rows, name
        assert all(("| seen |" if seen else "| unseen |") in row for row in rows), name
