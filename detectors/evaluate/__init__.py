"""Evaluation: detection metrics, baseline scores and the markdown / ROC / JSON report
(``detectors.evaluate.report``, imported on its own: it loads matplotlib, which scoring
— the baselines the feature extractor reuses — does not need).

Every score follows one convention: higher = more likely challenging (adversarial,
OOD or corrupted). Challenge inputs are the positives, clean inputs the negatives.
"""

from detectors.evaluate import baselines
from detectors.evaluate.metrics import DetectionMetrics, detection_metrics

__all__ = [
    "DetectionMetrics",
    "baselines",
    "detection_metrics",
]
