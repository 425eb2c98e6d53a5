"""The Fashion-MNIST benchmark: a small ResNet on 70,000 real 28×28 garment images.

Data: Debian's ``dataset-fashion-mnist`` (Zalando Research, MIT/Expat licence), idx
files under ``/usr/share/datasets/fashion-mnist/`` or a folder the user names.
"""

from __future__ import annotations

from pathlib import Path

from detectors.challenges.corruption import COMMON
from detectors.demo import ARTIFACTS
from detectors.demo.bars import check_fashion_bars
from detectors.demo.datasets.registry import DemoDataset, register
from detectors.demo.fashion_model import build_model
from detectors.demo.fashion_train import DEFAULT_DIR, load_fashion, train_classifier
from detectors.demo.sets import SEVERITIES, TONES, VIEWS

#: H sees exactly these at fit time (FGSM at Fashion-MNIST's usual budget, 0.1).
FIT_CHALLENGES: tuple[str, ...] = (
    "fgsm:eps=0.1",
    "corruption:type=gaussian_noise,severity=3",
    "ood:source=uniform",
)

#: More generators per family for the kind-attribution head only; none is a report set.
ATTRIBUTION_CHALLENGES: tuple[str, ...] = (
    "mim:eps=0.1,eps_step=0.01,steps=10",
    "corruption:type=speckle_noise,severity=2",
    "corruption:type=speckle_noise,severity=4",
    "corruption:type=gaussian_blur,severity=2",
    "corruption:type=gaussian_blur,severity=4",
    "corruption:type=spatter,severity=3",
    "ood:source=shapes",
    "ood:source=smooth",
    *TONES,
)

ATTACKS: tuple[tuple[str, str], ...] = (
    ("fgsm eps 0.05", "fgsm:eps=0.05"),
    ("fgsm eps 0.1", "fgsm:eps=0.1"),
    ("fgsm eps 0.2", "fgsm:eps=0.2"),
    ("bim eps 0.1", "bim:eps=0.1,eps_step=0.01,steps=20"),
    ("pgd eps 0.1", "pgd:eps=0.1,eps_step=0.01,steps=40"),
    ("carlini-wagner l2", "cw"),
    ("deepfool", "deepfool"),
    ("square eps 0.1 (black-box)", "square:eps=0.1"),
)

#: MNIST digits come from the shared 10,000-digit file (README: Data and licences).
MNIST_DIGITS = "../shared/data/mnist10k.npz"

OOD: tuple[tuple[str, str], ...] = (
    ("uniform noise", "ood:source=uniform"),
    ("gaussian noise", "ood:source=gaussian"),
    ("mnist digits", f"ood:source={MNIST_DIGITS}"),
    ("gimp textures", "ood:source=textures"),
    ("skimage patches", "ood:source=skimage"),
)


def report_sets() -> list[tuple[str, str]]:
    """(name, spec) of every set in the Fashion-MNIST report: attacks, corruptions, OOD."""
    corruptions = [
        (f"{c} s{s}", f"corruption:type={c},severity={s}") for c in COMMON for s in SEVERITIES
    ]
    return [*ATTACKS, *corruptions, *OOD]


FASHION = register(
    DemoDataset(
        name="fashion",
        title="Fashion-MNIST",
        default_data=DEFAULT_DIR,
        data_help="folder of the Fashion-MNIST idx .gz files (Debian: dataset-fashion-mnist)",
        artifacts=ARTIFACTS / "fashion",
        report_dir=Path("docs/fashion"),
        model_name="FashionResNet (3 stages of BasicBlocks, 16/32/64 channels)",
        load_splits=load_fashion,
        train=lambda split, progress: train_classifier(split, progress=progress),
        build_model=build_model,
        fit_challenges=FIT_CHALLENGES,
        attribution_challenges=ATTRIBUTION_CHALLENGES,
        report_sets=report_sets,
        check_bars=check_fashion_bars,
        detector_data="Fashion-MNIST training images 55,000-56,999 of the fixed split",
        views=VIEWS,
        test_limit=2000,
        # Class means and one tied covariance of <= 128 dimensions: 10,000 images are plenty,
        # and the probe pass over all 55,000 would cost minutes for nothing.
        stats_limit=10_000,
        attribution_limit=1000,
    )
)
