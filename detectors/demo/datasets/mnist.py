"""The MNIST demo: a small CNN on 10,000 real digits (``../shared/data/mnist10k.npz``)."""

from __future__ import annotations

from pathlib import Path

from detectors.demo import ARTIFACTS
from detectors.demo.bars import check_bars
from detectors.demo.datasets.registry import DemoDataset, register
from detectors.demo.model import build_model
from detectors.demo.sets import ATTRIBUTION_CHALLENGES, FIT_CHALLENGES, VIEWS, report_sets
from detectors.demo.train import load_mnist_npz, train_classifier

MNIST = register(
    DemoDataset(
        name="mnist",
        title="MNIST digits",
        default_data=Path("../shared/data/mnist10k.npz"),
        data_help="the 10,000-digit MNIST npz (images uint8 [N,28,28], labels)",
        artifacts=ARTIFACTS,
        report_dir=Path("docs/demo"),
        model_name="demo MnistCNN",
        load_splits=lambda path: load_mnist_npz(str(path)),
        train=lambda split, progress: train_classifier(split, progress=progress),
        build_model=build_model,
        fit_challenges=FIT_CHALLENGES,
        attribution_challenges=ATTRIBUTION_CHALLENGES,
        report_sets=report_sets,
        check_bars=check_bars,
        detector_data="MNIST digits 6,000-7,999 of the fixed split",
        views=VIEWS,
    )
)
