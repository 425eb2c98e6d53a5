"""Fixtures for the adaptive-attack tests: the committed demo and its sample digits."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.adaptive.setup import AttackSetup, Labelled
from detectors.demo import ARTIFACTS, load_demo_model
from detectors.sentry import Sentry


@pytest.fixture(scope="module")
def demo_sentry() -> Sentry:
    return Sentry.load(load_demo_model(), ARTIFACTS / "bundle")


@pytest.fixture(scope="module")
def sample_digits() -> tuple[np.ndarray, np.ndarray]:
    """The demo's 64 committed MNIST test digits: float32 [64, 1, 28, 28], int64 [64]."""
    with np.load(ARTIFACTS / "samples.npz", allow_pickle=False) as d:
        return d["images"].astype(np.float32)[:, None] / 255.0, d["labels"].astype(np.int64)


@pytest.fixture(scope="module")
def sample_setup(
    demo_sentry: Sentry,
    sample_digits: tuple[np.ndarray, np.ndarray],
    digits: tuple[np.ndarray, np.ndarray],
) -> AttackSetup:
    """The demo model and bundle; the sample digits attacked; the baselines fitted on
    scikit-learn's digits (1,200) and calibrated on the rest (597) — the tests check
    copies against references, which any clean data exercises."""
    images, labels = digits
    return AttackSetup(
        name="mnist-samples",
        model=demo_sentry.extractor.model,
        bundle=ARTIFACTS / "bundle",
        test=Labelled(*sample_digits),
        baseline_fit=Labelled(images[:1200], labels[:1200]),
        calibration=Labelled(images[1200:], labels[1200:]),
    )


def real_inputs(sample_digits: tuple[np.ndarray, np.ndarray], model) -> np.ndarray:
    """Clean digits, FGSM at 0.2 (the demo's fitted attack), uniform noise and Gaussian
    noise severity 3: float32 [4·32, 1, 28, 28], inputs H scores low and high."""
    from detectors.challenges import ChallengeContext, parse_spec

    images, labels = sample_digits[0][:32], sample_digits[1][:32]
    sets = [images]
    for spec in ("fgsm:eps=0.2", "ood:source=uniform", "corruption:type=gaussian_noise,severity=3"):
        ctx = ChallengeContext(images, labels, model, seed=0)
        sets.append(parse_spec(spec).generate(ctx).astype(np.float32))
    return np.concatenate(sets)
