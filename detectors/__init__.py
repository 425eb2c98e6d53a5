"""gradsentry's method as a library: per-sample confounding-gradient features and the detector H.

Importing the package imports nothing heavy: ``detectors.GradientProbe`` loads torch on
first use, so light entry points (the command line's ``--help``, ``health``) stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detectors.probe import GradientProbe

__all__ = ["GradientProbe"]


def __getattr__(name: str) -> Any:
    if name == "GradientProbe":
        from detectors.probe import GradientProbe

        return GradientProbe
    raise AttributeError(f"module 'detectors' has no attribute {name!r}")
