"""Errors shared by the library and the service that must be importable without torch."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """The classifier cannot be built or its weights loaded; the message says which."""
