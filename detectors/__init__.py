"""gradsentry's method as a library: per-sample confounding-gradient features and the detector H."""

from detectors.probe import GradientProbe

__all__ = ["GradientProbe"]
