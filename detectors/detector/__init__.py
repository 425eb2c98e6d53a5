"""H(·): the detector fitted on gradient features, and its ONNX export."""

from detectors.detector.calibration import CalibrationWarning, calibrate_threshold
from detectors.detector.classifiers import CLASSIFIERS, build_classifier, register_classifier
from detectors.detector.estimator import ReliabilityDetector
from detectors.detector.export import to_onnx, to_onnx_detector
from detectors.detector.kinds import ALL_KINDS, CHALLENGE_KINDS, CLEAN
from detectors.detector.runtime import InvalidOnnxHeadError, OnnxDetector
from detectors.detector.scoring import DetectorScores
from detectors.detector.strategies import STRATEGIES, Strategy, get_strategy, register_strategy
from detectors.detector.transform import LogTransform

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
