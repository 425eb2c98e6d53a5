"""Per-layer norm rules. Each module registers itself with ``register_rule``; they are
imported here, explicitly, so importing the probe makes every rule available."""

from detectors.probe.rules import (
    batchnorm,
    conv,
    embedding,
    groupnorm,
    layernorm,
    linear,
)

__all__ = ["batchnorm", "conv", "embedding", "groupnorm", "layernorm", "linear"]
