"""Export a fitted ReliabilityDetector's heads to ONNX with skl2onnx."""

from __future__ import annotations

from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType
from sklearn.utils.validation import check_is_fitted

from detectors.detector.estimator import ReliabilityDetector
from detectors.detector.runtime import Device, OnnxDetector

# Pinned so bundles load on onnxruntime releases older than the one that wrote them.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "X"


def to_onnx(detector: ReliabilityDetector) -> dict[str, bytes]:
    """{head name: serialized ONNX model} for a fitted detector.

    Each graph takes the *transformed* features as float64 ``X`` [N, F] (the log transform
    runs in numpy beforehand) and outputs ``label`` int64 [N] and ``probabilities`` [N, C]
    (a plain tensor: no ZipMap), matching the head Pipeline's ``predict_proba`` to 1e-5.
    """
    if not isinstance(detector, ReliabilityDetector):
        raise TypeError(f"expected a ReliabilityDetector, got {type(detector).__name__}")
    check_is_fitted(detector, "heads_")
    out = {}
    for head, pipe in detector.heads_.items():
        model = convert_sklearn(
            pipe,
            name=f"gradsentry_{head}",
            initial_types=[(INPUT_NAME, DoubleTensorType([None, detector.n_features_in_]))],
            options={id(pipe.steps[-1][1]): {"zipmap": False}},
            target_opset=TARGET_OPSET,
        )
        model.doc_string = (
            f"gradsentry detector head {head!r}: classifier "
            f"{detector.classifier!r}, strategy {detector.strategy!r}"
        )
        out[head] = model.SerializeToString()
    return out


def to_onnx_detector(detector: ReliabilityDetector, *, device: Device = "cpu") -> OnnxDetector:
    """The ONNX twin of a fitted detector (same transform, strategy, kinds and threshold)."""
    return OnnxDetector(
        to_onnx(detector),
        detector.transform_,
        detector.strategy,
        detector.kinds_,
        detector.threshold_,
        device=device,
        attribution_temperature=getattr(detector, "attribution_temperature_", 1.0),
    )
