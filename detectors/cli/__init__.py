"""The ``gradsentry`` command line: fit, eval, demo, bench (and serve, once the sidecar lands)."""

from detectors.cli.main import main

__all__ = ["main"]
