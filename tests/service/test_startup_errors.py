"""``gradsentry serve`` refuses to start on a bad bundle or a port it cannot have: one line
on stderr (besides the log), exit 2, nothing served.

Each bundle below is the committed demo bundle with one hand-made inconsistency that its
manifest's own checks cannot see without the model (widths, class counts, magnitudes) or
that used to pass loading and crash at warm-up.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from detectors.demo import ARTIFACTS
from tests.servers import ROOT, WAIT, serve_process, server_env, write_config

Manifest = dict[str, Any]


def _layer(m: Manifest) -> dict[str, Any]:
    return next(iter(m["feature_spec"]["layers"].values()))


def cut_layer_width(m: Manifest) -> None:
    """Means and whitener cut to width 5 together (the activation is wider)."""
    layer = _layer(m)
    layer["means"] = [row[:5] for row in layer["means"]]
    layer["whitener"] = layer["whitener"][:5]


def huge_whitener(m: Manifest) -> None:
    _layer(m)["whitener"] = [[1e308] * len(r) for r in _layer(m)["whitener"]]


def nan_means(m: Manifest) -> None:
    _layer(m)["means"][0][0] = float("nan")


def few_novelty_classes(m: Manifest) -> None:
    """Novelty statistics for 5 classes: the model has 10."""
    m["feature_spec"]["novelty"]["means"] = m["feature_spec"]["novelty"]["means"][:5]


def novelty_class_beyond_the_model(m: Manifest) -> None:
    """Novelty statistics with class ids, one of them a class the model does not have."""
    novelty = m["feature_spec"]["novelty"]
    novelty["classes"] = [*range(len(novelty["means"]) - 1), 12]


def cut_novelty_width(m: Manifest) -> None:
    novelty = m["feature_spec"]["novelty"]
    novelty["means"] = [row[:3] for row in novelty["means"]]
    novelty["whitener"] = novelty["whitener"][:3]


def threshold(value: float) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        m["threshold"] = value

    return edit


def short_log_columns(m: Manifest) -> None:
    m["transform"]["log_columns"] = m["transform"]["log_columns"][:-1]


def unknown_param(m: Manifest) -> None:
    m["feature_spec"]["params"][0] = "features.99.weight"


def unknown_layer(m: Manifest) -> None:
    layers = m["feature_spec"]["layers"]
    layers["classifier.7"] = layers.pop(next(iter(layers)))


def unknown_logit_stat(m: Manifest) -> None:
    m["feature_spec"]["logit_stats"][0] = "confidence"


def dropped_schema_column(m: Manifest) -> None:
    m["feature_spec"]["logit_stats"] = m["feature_spec"]["logit_stats"][:-1]


def swapped_head(m: Manifest) -> None:
    m["heads"]["ood"], m["heads"]["adversarial"] = m["heads"]["adversarial"], m["heads"]["ood"]
    m["heads"]["ood"] = {**m["heads"]["ood"], "file": "ood.onnx"}


BUNDLES: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "cut layer width": (cut_layer_width, "do not fit together or the 32 features"),
    "huge whitener": (huge_whitener, "fitted statistics stay far below"),
    "NaN in means": (nan_means, "non-empty finite matrix"),
    "few novelty classes": (few_novelty_classes, "cover 5 classes, the model has 10"),
    "novelty class beyond the model": (
        novelty_class_beyond_the_model,
        "novelty statistics name classes up to 12, the model has 10",
    ),
    "cut novelty width": (cut_novelty_width, "novelty means"),
    "threshold 0": (threshold(0.0), "'threshold' must be a number in (0, 1)"),
    "threshold 1": (threshold(1.0), "'threshold' must be a number in (0, 1)"),
    "short log columns": (short_log_columns, "log_columns"),
    "unknown parameter": (unknown_param, "features.99.weight"),
    "unknown layer": (unknown_layer, "'classifier.7' is not a submodule"),
    "unknown logit statistic": (unknown_logit_stat, "unknown logit statistic"),
    "dropped schema column": (dropped_schema_column, "feature"),
    "swapped head": (swapped_head, "ood.onnx"),
}


def bad_bundle(directory: Path, edit: Callable[[Manifest], None]) -> Path:
    bundle = directory / "bundle"
    shutil.copytree(ARTIFACTS / "bundle", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    edited = copy.deepcopy(manifest)
    edit(edited)
    assert edited != manifest
    (bundle / "manifest.json").write_text(json.dumps(edited), encoding="utf-8")
    return bundle


def serve_fails(directory: Path, **config: Any) -> str:
    """Run ``gradsentry serve`` to its end; assert exit 2 with one error line; return it."""
    path = write_config(directory, **config)
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(path)],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=2 * WAIT,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # Log records carry a timestamp and a level; the error is the one line that does not.
    errors = [line for line in done.stderr.splitlines() if line.strip() and not line[:4].isdigit()]
    assert len(errors) == 1 and errors[0].startswith("gradsentry serve: error: "), done.stderr
    return errors[0]


@pytest.mark.parametrize("case", list(BUNDLES))
def test_an_inconsistent_bundle_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    edit, words = BUNDLES[case]
    bundle = bad_bundle(tmp_path, edit)
    # The model in the server process: the quicker start; two cases go through the model
    # worker process too, whose load errors must read the same.
    worker = "process" if case in ("cut layer width", "few novelty classes") else "inline"
    line = serve_fails(tmp_path, bundle=str(bundle), model_worker=worker)
    assert words in line, line


def test_a_second_server_on_the_same_port_is_refused(tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    with serve_process(first_dir, model_worker="inline") as first:
        line = serve_fails(second_dir, port=first.port, model_worker="inline")
        assert f"cannot listen on 127.0.0.1:{first.port}" in line, line
        line = serve_fails(second_dir, metrics_port=first.metrics_port, model_worker="inline")
        assert f"cannot serve metrics on 127.0.0.1:{first.metrics_port}" in line, line
        assert first.proc.poll() is None  # the first one serves on, alone


def test_a_pickled_model_as_weights_never_suggests_unpickling(tmp_path: Path) -> None:
    """torch's own message advises weights_only=False; ours must not."""
    from detectors.demo.model import build_model  # the demo architecture, pickled whole

    weights = tmp_path / "whole_model.pt"
    torch.save(build_model(), weights)
    line = serve_fails(tmp_path, model_weights=str(weights), model_worker="inline")
    assert "pickled Python object" in line and "state_dict" in line, line
    assert "weights_only" not in line, line
