"""Evaluation: detection metrics, baseline scores and the markdown / ROC / JSON report.

Every score follows one convention: higher = more likely challenging (adversarial,
OOD or corrupted). Challenge inputs are the positives, clean inputs the negatives.
"""

from detectors.evaluate import baselines
from detectors.evaluate.metrics import DetectionMetrics, detection_metrics
from detectors.evaluate.report import (
    CleanScores,
    Report,
    ReportFiles,
    SetResult,
    SetScores,
    build_report,
)

__all__ = [
    "CleanScores",
    "DetectionMetrics",
    "Report",
    "ReportFiles",
    "SetResult",
    "SetScores",
    "baselines",
    "build_report",
    "detection_metrics",
]
