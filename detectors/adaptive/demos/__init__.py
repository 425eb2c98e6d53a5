"""Demos the attack report knows by name. Every entry is imported here, explicitly."""

from detectors.adaptive.demos import mnist  # noqa: F401
from detectors.adaptive.demos.registry import available_demos, load_demo, register_demo

__all__ = ["available_demos", "load_demo", "register_demo"]
