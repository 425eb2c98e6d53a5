"""GradientProbe: per-sample, per-parameter confounding-gradient norms."""

from detectors.probe.core import GradientProbe

__all__ = ["GradientProbe"]
