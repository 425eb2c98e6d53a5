"""Fixtures for the command-line tests: weights and data files, one fit and one eval run.

The CLI is called in-process through ``detectors.cli.main(argv)``; the demo model factory
builds the architecture and ``--weights`` loads the digits model's state dict.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors.cli import main

MODEL = "detectors.demo.model:build_model"
FIT_SPECS = ("fgsm", "ood:source=uniform")


@dataclass(frozen=True)
class Run:
    """The outcome of one ``main(argv)`` call."""

    code: int
    out: str
    err: str


def run_cli(*argv: str | Path) -> Run:
    """Call ``main`` with stdout and stderr captured (usable from session fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session directory for the shared input files and outputs."""
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="session")
def weights(digits_model: nn.Module, files: Path) -> Path:
    """The digits model's state dict, saved with torch.save."""
    path = files / "weights.pt"
    torch.save(digits_model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def other_weights(digits_model: nn.Module, files: Path) -> Path:
    """The same architecture with one bias nudged: another model to a bundle."""
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other.fc2.bias.add_(1e-3)
    path = files / "other_weights.pt"
    torch.save(other.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def fit_data(digits: tuple[np.ndarray, np.ndarray], files: Path) -> Path:
    """npz: images uint8 [200, 28, 28] (the MNIST file layout), labels int64 [200]."""
    images, labels = digits
    path = files / "fit.npz"
    np.savez(path, images=(images[:200, 0] * 255).round().astype(np.uint8), labels=labels[:200])
    return path


@pytest.fixture(scope="session")
def test_data(digits: tuple[np.ndarray, np.ndarray], files: Path) -> Path:
    """npz: images float32 [60, 1, 28, 28], labels int64 [60]; disjoint from fit_data."""
    images, labels = digits
    path = files / "test.npz"
    np.savez(path, images=images[1000:1060], labels=labels[1000:1060])
    return path


@pytest.fixture(scope="session")
def stats_data(digits: tuple[np.ndarray, np.ndarray], files: Path) -> Path:
    """npz: float32 [300, 1, 28, 28] + labels, disjoint from the fit and test data."""
    images, labels = digits
    path = files / "stats.npz"
    np.savez(path, images=images[300:600], labels=labels[300:600])
    return path


@pytest.fixture(scope="session")
def fit_run(files: Path, weights: Path, fit_data: Path, stats_data: Path) -> tuple[Run, Path]:
    """``gradsentry fit`` against FIT_SPECS with the median view; (its outcome, the bundle
    directory)."""
    out = files / "bundle"
    challenges = [arg for spec in FIT_SPECS for arg in ("--challenge", spec)]
    result = run_cli(
        "fit", "--model", MODEL, "--weights", weights, "--data", fit_data, *challenges,
        "--stats-data", stats_data, "--out", out, "--target-fpr", "0.1", "--seed", "1",
        "--view", "median", "--quiet",
    )  # fmt: skip
    return result, out


@pytest.fixture(scope="session")
def bundle(fit_run: tuple[Run, Path]) -> Path:
    """The bundle written by ``fit_run`` (treat as read-only)."""
    result, path = fit_run
    assert result.code == 0, result.err
    return path


@dataclass(frozen=True)
class EvalRun:
    """``gradsentry eval`` outcome and the paths it was asked to write."""

    run: Run
    report: Path
    json: Path


#: (set argument, expected name in the report, seen at fit time?)
EVAL_SETS = (
    ("fgsm", "fgsm:eps=0.2", True),  # bare spec: canonicalised, matches the fit's fgsm
    ("weak=fgsm:eps=0.1", "weak", False),  # same attack, other strength: unseen
    ("noise=corruption:type=gaussian_noise,severity=3", "noise", False),
    ("ood:source=gaussian", "ood:source=gaussian", False),
    ("uniform=ood:source=uniform", "uniform", True),
)


@pytest.fixture(scope="session")
def eval_run(files: Path, bundle: Path, weights: Path, test_data: Path, fit_data: Path) -> EvalRun:
    report, json_path = files / "report", files / "json" / "eval.json"
    sets = [arg for s, _, _ in EVAL_SETS for arg in ("--set", s)]
    result = run_cli(
        "eval", "--bundle", bundle, "--model", MODEL, "--weights", weights, "--data", test_data,
        *sets, "--baselines", "msp,energy,mahalanobis", "--baseline-data", fit_data,
        "--report", report, "--json", json_path, "--quiet",
    )  # fmt: skip
    return EvalRun(result, report, json_path)
