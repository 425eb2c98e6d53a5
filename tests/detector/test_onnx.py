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


def test_cuda_request_matches_what_onnxruntime_can_do(fitted: Fitted) -> None:
    det = fitted["logistic", "binary"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert to_onnx_detector(det, device="cuda").device_ == "cuda"
    else:
        with pytest.raises(RuntimeError, match="CUDA provider is not usable"):
            to_onnx_detector(det, device="cuda")
        assert to_onnx_detector(det, device="auto").device_ == "cpu"


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
