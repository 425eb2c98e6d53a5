"""ONNX export: the onnxruntime twin scores exactly like scikit-learn, for every combination."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from detectors.detector import (
    InvalidOnnxHeadError,
    LogTransform,
    OnnxDetector,
    ReliabilityDetector,
    to_onnx,
    to_onnx_detector,
)
from detectors.detector.runtime import CPU, CUDA, providers_for
from tests.detector.conftest import COMBOS, KINDS

Fitted = dict[tuple[str, str], ReliabilityDetector]


@pytest.mark.parametrize(("classifier", "strategy"), COMBOS)
def test_onnx_scores_equal_sklearn_scores(
    fitted: Fitted, fresh_set: tuple[np.ndarray, np.ndarray], classifier: str, strategy: str
) -> None:
    det = fitted[classifier, strategy]
    heads = to_onnx(det)
    assert set(heads) == set(det.heads_)
    for data in heads.values():
        model = onnx.load_model_from_string(data)
        assert [o.name for o in model.graph.output] == ["label", "probabilities"]  # no ZipMap
    twin = OnnxDetector(
        heads,
        det.transform_,
        strategy,
        det.kinds_,
        det.threshold_,
        attribution_temperature=det.attribution_temperature_,
    )

    X = fresh_set[0]
    p_sk, p_ox = det.predict_proba(X), twin.predict_proba(X)
    assert p_ox.dtype == np.float64 and p_ox.shape == p_sk.shape
    np.testing.assert_allclose(p_ox, p_sk, rtol=0, atol=1e-5)
    k_sk, k_ox = det.kind_scores(X), twin.kind_scores(X)
    assert set(k_ox) == set(k_sk)
    for kind in k_sk:
        np.testing.assert_allclose(k_ox[kind], k_sk[kind], rtol=0, atol=1e-5)
    clear = np.abs(p_sk - det.threshold_) > 1e-5  # rows not sitting on the threshold
    np.testing.assert_array_equal(twin.predict(X)[clear], det.predict(X)[clear])
    assert twin.threshold_ == det.threshold_ and twin.kinds_ == KINDS
    assert twin.n_features_in_ == det.n_features_in_


def test_session_provider_is_reported(fitted: Fitted) -> None:
    twin = to_onnx_detector(fitted["logistic", "per_kind"])
    assert twin.providers_, "the sessions' real providers are exposed"
    assert twin.device_ == ("cuda" if "CUDAExecutionProvider" in twin.providers_ else "cpu")
    cpu = to_onnx_detector(fitted["logistic", "per_kind"], device="cpu")
    assert cpu.providers_ == ["CPUExecutionProvider"] and cpu.device_ == "cpu"


def test_a_cuda_request_falls_back_to_the_cpu_with_a_warning(
    fitted: Fitted, caplog: pytest.LogCaptureFixture
) -> None:
    """A CUDA torch beside the CPU onnxruntime (or a broken CUDA install) must still score:
    H asked for "cuda:1" runs where onnxruntime really can, and says so."""
    det = fitted["logistic", "binary"]
    twin = to_onnx_detector(det, device="cuda:1")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert twin.device_ == "cuda"
        assert twin.provider_options_["CUDAExecutionProvider"]["device_id"] == "1"
    else:
        assert twin.device_ == "cpu" and twin.providers_ == ["CPUExecutionProvider"]
        assert "cuda:1 asked" in caplog.text and "scoring H on the CPU" in caplog.text
    X = np.random.default_rng(0).random((4, det.n_features_in_)) + 0.1
    np.testing.assert_allclose(twin.predict_proba(X), det.predict_proba(X), rtol=1e-6)


@pytest.mark.parametrize(
    ("device", "available", "plan"),
    [
        ("cpu", [CUDA, CPU], [CPU]),
        ("auto", [CUDA, CPU], [CPU]),
        ("cuda", [CUDA, CPU], [(CUDA, {"device_id": "0"}), CPU]),
        ("cuda:1", [CUDA, CPU], [(CUDA, {"device_id": "1"}), CPU]),
        ("cuda:1", [CPU], [CPU]),
    ],
)
def test_the_device_index_reaches_onnxruntime(
    device: str, available: list[str], plan: list[object]
) -> None:
    """ "cuda:N" asks the CUDA provider for device N, never device 0 (no GPU needed: this is
    the provider list onnxruntime gets)."""
    assert providers_for(device, available) == plan


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_an_unknown_device_is_refused(fitted: Fitted, device: str) -> None:
    with pytest.raises(ValueError, match="device must be"):
        to_onnx_detector(fitted["logistic", "binary"], device=device)


def test_onnx_detector_rejects_inconsistent_parts(fitted: Fitted) -> None:
    det = fitted["logistic", "per_kind"]
    heads = to_onnx(det)
    t = det.transform_
    with pytest.raises(ValueError, match="needs heads"):
        OnnxDetector({"ood": heads["ood"]}, t, "per_kind", KINDS, 0.5)
    with pytest.raises(ValueError, match="needs heads"):
        OnnxDetector(heads, t, "binary", KINDS, 0.5)
    with pytest.raises(InvalidOnnxHeadError, match="'ood' is not a valid ONNX model"):
        OnnxDetector({**heads, "ood": b"\x00garbage"}, t, "per_kind", KINDS, 0.5)
    with pytest.raises(ValueError, match="transform has 3 log_columns flags"):
        OnnxDetector(heads, LogTransform(np.ones(3, bool)), "per_kind", KINDS, 0.5)
    with pytest.raises(ValueError, match="threshold"):
        OnnxDetector(heads, t, "per_kind", KINDS, 1.5)
    with pytest.raises(ValueError, match="unknown challenge kind"):
        OnnxDetector(heads, t, "per_kind", ["ood", "spoof"], 0.5)
    twin = OnnxDetector(heads, t, "per_kind", KINDS, 0.5)
    with pytest.raises(ValueError, match="11 features per row"):
        twin.predict_proba(np.ones((1, 11)))


def test_to_onnx_requires_a_fitted_detector() -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        to_onnx(ReliabilityDetector())
