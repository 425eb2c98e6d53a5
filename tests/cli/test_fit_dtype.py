"""``gradsentry fit --model-dtype bfloat16``: the features are computed in bf16, the bundle
says so (``fitted_on``) and carries the fingerprint of the model as stored, so a server
checks it before casting; served at bf16 it needs no warning, at float32 it gets one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from detectors.bundle import model_fingerprint
from detectors.demo.model import build_model
from detectors.sentry import Sentry
from service import numerics
from tests.cli.conftest import MODEL, run_cli


def test_fit_at_bfloat16_records_it(
    tmp_path: Path, weights: Path, fit_data: Path, stats_data: Path, caplog
) -> None:
    out = tmp_path / "bf16-bundle"
    result = run_cli(
        "fit", "--model", MODEL, "--weights", weights, "--data", fit_data,
        "--challenge", "ood:source=uniform", "--stats-data", stats_data, "--out", out,
        "--target-fpr", "0.1", "--model-dtype", "bfloat16", "--quiet",
    )  # fmt: skip
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fitted_on"] == {"device": "cpu", "dtype": "bfloat16"}
    model = build_model()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    assert manifest["model_fingerprint"] == model_fingerprint(model)  # as stored: float32
    sentry = Sentry.load(model, out)
    x = torch.zeros(3, 1, 28, 28)
    with caplog.at_level(logging.WARNING, logger="service.numerics"):
        assert numerics.serve_at(sentry, model, torch.device("cpu"), "bfloat16", x) is None
        assert next(model.parameters()).dtype == torch.bfloat16
        assert not caplog.records
        diff = numerics.serve_at(sentry, model, torch.device("cpu"), "float32", x)
    assert diff is not None and diff.fitted["dtype"] == "bfloat16"
    assert diff.feature_rel > 0  # bf16 and float32 features do differ
    assert "fitted in bfloat16 on cpu, served in float32 on cpu" in caplog.text


def test_fit_refuses_an_unknown_dtype(tmp_path: Path, weights: Path, fit_data: Path) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(
            "fit", "--model", MODEL, "--weights", weights, "--data", fit_data,
            "--out", tmp_path / "b", "--model-dtype", "int8",
        )  # fmt: skip
    assert info.value.code == 2
