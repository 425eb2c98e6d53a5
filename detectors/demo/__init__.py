"""The bundled demo: a small MNIST CNN, a detector fitted on it, and sample digits.

MNIST (Y. LeCun, C. Cortes, C. J. C. Burges) is licensed CC BY-SA 3.0; the model
weights and sample digits in ``artifacts/`` derive from it.

``ARTIFACTS`` is importable without torch (the server's config defaults point at it);
``load_demo_model`` imports torch when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detectors.demo.model import MnistCNN

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def load_demo_model(artifacts: Path = ARTIFACTS) -> MnistCNN:
    """The committed demo classifier in eval mode (weights loaded with weights_only=True)."""
    import torch

    from detectors.demo.model import build_model

    model = build_model()
    model.load_state_dict(torch.load(artifacts / "model.pt", map_location="cpu", weights_only=True))
    return model.eval()
