"""H(·): the detector fitted on gradient features, and its ONNX export.

Scoring a fitted H (``OnnxDetector``, the strategies, the transform) needs NumPy and
onnxruntime only. Fitting and exporting it (``ReliabilityDetector``, the classifier
registry, ``to_onnx``) needs scikit-learn and skl2onnx, the lab extra: those names load on
first use, so that serving never imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from detectors.detector.calibration import CalibrationWarning, calibrate_threshold
from detectors.detector.kinds import ALL_KINDS, CHALLENGE_KINDS, CLEAN
from detectors.detector.runtime import InvalidOnnxHeadError, OnnxDetector
from detectors.detector.scoring import DetectorScores
from detectors.detector.strategies import STRATEGIES, Strategy, get_strategy, register_strategy
from detectors.detector.transform import LogTransform

if TYPE_CHECKING:
    from detectors.detector.classifiers import (
        CLASSIFIERS,
        build_classifier,
        register_classifier,
    )
    from detectors.detector.estimator import ReliabilityDetector
    from detectors.detector.export import to_onnx, to_onnx_detector

# name -> the module that defines it, for the fitting side (scikit-learn, skl2onnx).
_FITTING = {
    "CLASSIFIERS": "detectors.detector.classifiers",
    "build_classifier": "detectors.detector.classifiers",
    "register_classifier": "detectors.detector.classifiers",
    "ReliabilityDetector": "detectors.detector.estimator",
    "to_onnx": "detectors.detector.export",
    "to_onnx_detector": "detectors.detector.export",
}


def __getattr__(name: str) -> Any:
    if name in _FITTING:
        return getattr(importlib.import_module(_FITTING[name]), name)
    raise AttributeError(f"module 'detectors.detector' has no attribute {name!r}")


__all__ = [
    "ALL_KINDS",
    "CHALLENGE_KINDS",
    "CLASSIFIERS",
    "CLEAN",
    "STRATEGIES",
    "CalibrationWarning",
    "DetectorScores",
    "InvalidOnnxHeadError",
    "LogTransform",
    "OnnxDetector",
    "ReliabilityDetector",
    "Strategy",
    "build_classifier",
    "calibrate_threshold",
    "get_strategy",
    "register_classifier",
    "register_strategy",
    "to_onnx",
    "to_onnx_detector",
]
