"""Detector bundles: save/load round trip, and every refusal load_bundle promises."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detectors.bundle import (
    FORMAT_VERSION,
    REQUIRED_FIELDS,
    BundleCorruptError,
    BundleError,
    BundleExistsError,
    BundleFormatError,
    BundleMismatchError,
    BundleNotFoundError,
    BundleVersionError,
    load_bundle,
    model_fingerprint,
    save_bundle,
)
from detectors.demo.model import MnistCNN
from detectors.detector import ReliabilityDetector, to_onnx_detector
from tests.detector.synthetic import N_NORMS

Fitted = dict[tuple[str, str], ReliabilityDetector]


@pytest.fixture(scope="module")
def model() -> MnistCNN:
    torch.manual_seed(0)
    return MnistCNN().eval()


@pytest.fixture(scope="module")
def schema(model: MnistCNN) -> list[dict[str, Any]]:
    """Ten columns: norms of eight parameter tensors, then two logit statistics."""
    params = list(model.named_parameters())[:N_NORMS]
    return [{"name": n, "shape": tuple(p.shape), "kind": "grad_sq_norm"} for n, p in params] + [
        {"name": "logit:max", "kind": "logit_stat"},
        {"name": "logit:energy", "kind": "logit_stat"},
    ]


@pytest.fixture()
def save(fitted: Fitted, model: MnistCNN, schema: list[dict[str, Any]]) -> Any:
    """save(path, detector=logistic/per_kind, **overrides) with valid defaults."""

    def _save(path: Path, detector: ReliabilityDetector | None = None, **kw: Any) -> Path:
        args: dict[str, Any] = {
            "feature_schema": schema,
            "feature_spec": {"probe": "per-parameter", "logit_stats": ["max", "energy"]},
            "model_fingerprint": model_fingerprint(model),
            "loss": "all_ones",
            "fit_summary": {"rows": {"clean": np.int64(800), "ood": 400}},
            "metrics": {"auroc": np.float64(0.83), "per_kind": {"ood": 0.8}},
        }
        args.update(kw)
        return save_bundle(path, detector or fitted["logistic", "per_kind"], **args)

    return _save


def _edit_manifest(path: Path, edit: Any) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_round_trip_gives_identical_scores(
    tmp_path: Path,
    save: Any,
    fitted: Fitted,
    model: MnistCNN,
    schema: list[dict[str, Any]],
    fresh_set: tuple[np.ndarray, np.ndarray],
) -> None:
    det = fitted["logistic", "per_kind"]
    path = save(tmp_path / "bundle")
    assert sorted(p.name for p in path.iterdir()) == [
        "adversarial.onnx",
        "corrupted.onnx",
        "kind.onnx",
        "manifest.json",
        "ood.onnx",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary leftovers

    bundle = load_bundle(path, model_fingerprint=model_fingerprint(model), feature_schema=schema)
    X = fresh_set[0]
    direct = to_onnx_detector(det)
    np.testing.assert_array_equal(bundle.detector.predict_proba(X), direct.predict_proba(X))
    np.testing.assert_allclose(bundle.detector.predict_proba(X), det.predict_proba(X), atol=1e-5)
    for kind, scores in det.kind_scores(X).items():
        np.testing.assert_allclose(bundle.detector.kind_scores(X)[kind], scores, atol=1e-5)
    assert bundle.detector.threshold_ == det.threshold_

    m = bundle.manifest
    assert set(REQUIRED_FIELDS) <= set(m) and m["format_version"] == FORMAT_VERSION
    assert m["kinds"] == ["adversarial", "ood", "corrupted"]
    assert m["attribution"]["head"] == "kind"
    assert m["attribution"]["temperature"] == det.attribution_temperature_
    assert (m["strategy"], m["classifier"], m["loss"]) == ("per_kind", "logistic", "all_ones")
    assert m["threshold"] == det.threshold_ and m["target_fpr"] == 0.05
    assert m["calibration_fpr"] == det.calibration_fpr_
    assert m["transform"] == det.transform_.to_dict()
    assert m["feature_schema"][0]["shape"] == list(schema[0]["shape"])
    assert m["fit_summary"] == {"rows": {"clean": 800, "ood": 400}}  # numpy made plain
    assert set(m["versions"]) == {
        "python",
        "numpy",
        "scikit-learn",
        "skl2onnx",
        "onnx",
        "onnxruntime",
        "torch",
        "gradsentry",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", m["created"])
    for name, entry in m["heads"].items():
        assert entry["sha256"] == hashlib.sha256((path / entry["file"]).read_bytes()).hexdigest()
        assert entry["file"] == f"{name}.onnx"


@pytest.mark.parametrize(("classifier", "strategy"), [("gbm", "multiclass"), ("mlp", "binary")])
def test_round_trip_other_detectors(
    tmp_path: Path,
    save: Any,
    fitted: Fitted,
    fresh_set: tuple[np.ndarray, np.ndarray],
    classifier: str,
    strategy: str,
) -> None:
    det = fitted[classifier, strategy]
    bundle = load_bundle(save(tmp_path / "b", det))
    X = fresh_set[0]
    np.testing.assert_allclose(bundle.detector.predict_proba(X), det.predict_proba(X), atol=1e-5)
    assert bundle.manifest["classifier"] == classifier


def test_refuses_another_model(tmp_path: Path, save: Any, model: MnistCNN) -> None:
    path = save(tmp_path / "b")
    other = MnistCNN().eval()
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.fc2.bias[0] += 1.0
    ours, theirs = model_fingerprint(model), model_fingerprint(other)
    with pytest.raises(BundleMismatchError) as info:
        load_bundle(path, model_fingerprint=theirs)
    assert str(info.value) == (
        f"bundle was fitted for model {ours[:19]}…, this model is {theirs[:19]}…"
    )


def test_refuses_another_feature_schema(
    tmp_path: Path, save: Any, schema: list[dict[str, Any]]
) -> None:
    path = save(tmp_path / "b")
    renamed = [dict(e) for e in schema]
    renamed[3]["name"] = "features.4.bias"
    with pytest.raises(
        BundleMismatchError,
        match=r"position 3: bundle has 'features\.4\.weight'"
        r", model has 'features\.4\.bias'",
    ):
        load_bundle(path, feature_schema=renamed)
    reshaped = [dict(e) for e in schema]
    reshaped[0]["shape"] = (32, 1, 3, 3)
    with pytest.raises(BundleMismatchError, match=r"position 0 \('features\.0\.weight'\)"):
        load_bundle(path, feature_schema=reshaped)
    with pytest.raises(BundleMismatchError, match="bundle has 10 features, model has 11"):
        load_bundle(path, feature_schema=[*schema, {"name": "extra"}])
    load_bundle(path, feature_schema=[dict(e) for e in schema])  # equal copy is accepted


def test_refuses_corrupt_or_missing_heads(tmp_path: Path, save: Any) -> None:
    path = save(tmp_path / "b")
    head = path / "ood.onnx"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0x01
    head.write_bytes(bytes(data))
    with pytest.raises(BundleCorruptError, match=r"'ood\.onnx' is corrupt: sha256"):
        load_bundle(path)
    head.unlink()
    with pytest.raises(BundleCorruptError, match=r"'ood\.onnx' listed in manifest\.json is"):
        load_bundle(path)


def test_refuses_invalid_onnx_even_with_a_matching_hash(tmp_path: Path, save: Any) -> None:
    path = save(tmp_path / "b")
    junk = b"this is not an onnx model"
    (path / "ood.onnx").write_bytes(junk)
    _edit_manifest(
        path, lambda m: m["heads"]["ood"].update(sha256=hashlib.sha256(junk).hexdigest())
    )
    with pytest.raises(BundleCorruptError, match="'ood' is not a valid ONNX model"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("threshold"), r"missing field\(s\) \['threshold'\]"),
        (lambda m: m.update(threshold="high"), "'threshold' must be a number in \\(0, 1\\)"),
        (lambda m: m.update(target_fpr=0), "'target_fpr' must be a number in \\(0, 1\\)"),
        (lambda m: m.update(kinds=["adversarial", "ood"]), "do not match strategy 'per_kind'"),
        (lambda m: m.update(kinds=["adversarial", "ood", "spoof"]), "unknown challenge kind"),
        (lambda m: m.update(strategy="vote"), "'strategy' must be one of"),
        (lambda m: m.update(model_fingerprint="md5:abc"), "'model_fingerprint' must be"),
        (lambda m: m["heads"]["ood"].update(file="../ood.onnx"), "head 'ood' must be"),
        (lambda m: m["transform"].update(type="sqrt"), "unsupported transform type"),
        (lambda m: m["transform"].update(log_columns=[True] * 3), "transform has 3 log_columns"),
        (
            lambda m: m["feature_schema"].pop(),
            "feature_schema lists 9 features but the heads take 10",
        ),
        (lambda m: m["feature_schema"][2].pop("name"), "feature_schema'\\[2\\] must be an object"),
        (lambda m: m["attribution"].update(temperature=0), "'attribution' must be"),
        (lambda m: m["attribution"].update(head="kinds"), "'attribution' must be"),
        (lambda m: m.update(fitted_on={"device": "cpu", "dtype": "float8"}), "'fitted_on' must"),
        (lambda m: m.update(fitted_on="cuda"), "'fitted_on' must be"),
        # the kind head listed without its attribution entry (no temperature to apply)
        (lambda m: m.pop("attribution"), "do not match strategy 'per_kind'"),
    ],
)
def test_refuses_edited_manifest(tmp_path: Path, save: Any, edit: Any, match: str) -> None:
    path = save(tmp_path / "b")
    _edit_manifest(path, edit)
    with pytest.raises(BundleFormatError, match=match):
        load_bundle(path)


def test_records_the_precision_it_was_fitted_at(tmp_path: Path, save: Any) -> None:
    fitted = {"device": "cuda", "dtype": "bfloat16"}
    assert load_bundle(save(tmp_path / "b", fitted_on=fitted)).manifest["fitted_on"] == fitted
    assert "fitted_on" not in load_bundle(save(tmp_path / "c")).manifest  # float32 on cpu
    with pytest.raises(BundleError, match="'fitted_on' must be"):
        save(tmp_path / "d", fitted_on={"device": "cpu", "dtype": "int8"})


def test_refuses_broken_json_and_unsupported_version(tmp_path: Path, save: Any) -> None:
    path = save(tmp_path / "b")
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        load_bundle(path)
    (path / "manifest.json").write_text(text)
    _edit_manifest(path, lambda m: m.update(format_version=2))
    with pytest.raises(
        BundleVersionError,
        match="unsupported bundle format_version 2 "
        r"\(this gradsentry reads 1\)",
    ):
        load_bundle(path)


def test_refuses_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleNotFoundError, match="no bundle directory"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleNotFoundError, match=r"has no manifest\.json"):
        load_bundle(tmp_path / "empty")


def test_overwrite_is_refused_and_the_old_bundle_left_intact(
    tmp_path: Path, save: Any, fitted: Fitted
) -> None:
    path = save(tmp_path / "b")
    before = _snapshot(path)
    with pytest.raises(BundleExistsError, match="already exists; pass overwrite=True"):
        save(path, fitted["mlp", "binary"])
    assert _snapshot(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_overwrite_replaces_the_whole_bundle(tmp_path: Path, save: Any, fitted: Fitted) -> None:
    path = save(tmp_path / "b")
    save(path, fitted["mlp", "binary"], overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == [
        "challenge.onnx",
        "kind.onnx",
        "manifest.json",
    ]
    assert load_bundle(path).manifest["strategy"] == "binary"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_overwrite_never_replaces_something_that_is_not_a_bundle(tmp_path: Path, save: Any) -> None:
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(BundleExistsError, match="not a bundle"):
        save(target, overwrite=True)
    assert (target / "notes.txt").read_text() == "keep me"
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(BundleExistsError, match="not a directory"):
        save(file, overwrite=True)


def test_save_validates_its_arguments(
    tmp_path: Path, save: Any, schema: list[dict[str, Any]]
) -> None:
    with pytest.raises(BundleError, match="has 9 entries but the detector was fitted on 10"):
        save(tmp_path / "a", feature_schema=schema[:9])
    with pytest.raises(BundleError, match=r"feature_schema\[1\] must be an object"):
        save(tmp_path / "a", feature_schema=[schema[0], "fc1.weight", *schema[2:]])
    with pytest.raises(BundleError, match=r"metrics\.per_kind\.ood is nan"):
        save(tmp_path / "a", metrics={"per_kind": {"ood": float("nan")}})
    with pytest.raises(BundleError, match=r"fit_summary\.when has a value of type object"):
        save(tmp_path / "a", fit_summary={"when": object()})
    with pytest.raises(BundleError, match="model_fingerprint must look like"):
        save(tmp_path / "a", model_fingerprint="abc")
    with pytest.raises(BundleError, match="not fitted"):
        save(tmp_path / "a", ReliabilityDetector())
    assert list(tmp_path.iterdir()) == []  # nothing written for refused saves


def test_errors_are_value_errors_with_one_line_messages(tmp_path: Path, save: Any) -> None:
    path = save(tmp_path / "b")
    (path / "ood.onnx").write_bytes(b"\x08\x07garbage")
    _edit_manifest(
        path,
        lambda m: m["heads"]["ood"].update(sha256=hashlib.sha256(b"\x08\x07garbage").hexdigest()),
    )
    with pytest.raises(ValueError) as info:
        load_bundle(path)
    assert isinstance(info.value, BundleError) and "\n" not in str(info.value)


def test_bundle_code_never_unpickles() -> None:
    root = Path(__file__).resolve().parents[2] / "detectors"
    sources = [root / "bundle.py", *sorted((root / "detector").rglob("*.py"))]
    assert len(sources) > 10
    for source in sources:
        text = source.read_text()
        assert not re.search(r"\b(import|from)\s+(pickle|joblib|dill|cloudpickle)\b", text), source
        assert "torch.load" not in text or "weights_only=True" in text, source
