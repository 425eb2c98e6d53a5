"""The bundled MNIST demo: classifier split 0–5,999 (baselines fit there), detector split
6,000–7,999 (clean calibration), test split 8,000–9,999 (attacked)."""

from __future__ import annotations

from pathlib import Path

from detectors.adaptive.demos.registry import register_demo
from detectors.adaptive.setup import AttackSetup, Labelled
from detectors.data import DataError
from detectors.demo import ARTIFACTS, load_demo_model
from detectors.demo.train import load_mnist_npz

DEFAULT_DATA = Path("../shared/data/mnist10k.npz")


@register_demo("mnist")
def mnist(data: Path | None) -> AttackSetup:
    path = data or DEFAULT_DATA
    if not Path(path).is_file():
        raise DataError(f"MNIST data not found at {path}; pass --data (see the README)")
    splits = load_mnist_npz(str(path))
    return AttackSetup(
        name="mnist",
        model=load_demo_model(),
        bundle=ARTIFACTS / "bundle",
        test=Labelled(splits["test"].images, splits["test"].labels),
        baseline_fit=Labelled(splits["classifier"].images, splits["classifier"].labels),
        calibration=Labelled(splits["detector"].images, splits["detector"].labels),
        description="MNIST test digits 8,000–9,999 of the fixed split (first n attacked)",
    )
