"""Demo data sets: each a classifier, its fixed data splits, its fit and report sets.

``gradsentry demo build|report --dataset NAME`` looks the entry up here; one file per
entry (``mnist.py``, ``fashion.py``), registered with ``@register`` and imported
explicitly by this package's ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from detectors.demo.bars import Bar
    from detectors.demo.train import MnistSplit


@dataclass(frozen=True)
class DemoDataset:
    """Everything ``demo build`` and ``demo report`` need for one data set.

    load_splits: data path -> {"classifier", "detector", "test"} splits (images float32
        [N, 1, 28, 28] in [0, 1]); FileNotFoundError / ValueError name what is wrong.
    train: (classifier split, progress) -> the trained classifier in eval mode.
    build_model: the architecture, untrained (loaded with the committed state dict).
    fit_challenges: what H's detection heads are fitted on (against clean).
    attribution_challenges: more generators that only the kind-attribution head is
        trained on (kind against kind), disjoint from every set the report evaluates.
    report_sets: () -> [(name, challenge spec)] of every set the report evaluates.
    check_bars: report dict (``Report.to_dict()``) -> the data set's bars.
    views: squeezed views whose prediction shift is a feature (``detectors.views``).
    test_limit: how many test images the committed report evaluates (None: all).
    stats_limit: how many classifier-split images fit the feature statistics (None: all).
    attribution_limit: from how many detector-split images the attribution-only sets
        are made (None: all).
    """

    name: str
    title: str
    default_data: Path
    data_help: str
    artifacts: Path
    report_dir: Path
    model_name: str
    load_splits: Callable[[Path], dict[str, MnistSplit]]
    train: Callable[[MnistSplit, bool], nn.Module]
    build_model: Callable[[], nn.Module]
    fit_challenges: tuple[str, ...]
    attribution_challenges: tuple[str, ...]
    report_sets: Callable[[], list[tuple[str, str]]]
    check_bars: Callable[[dict[str, Any]], list[Bar]]
    detector_data: str
    views: tuple[str, ...] = ()
    test_limit: int | None = None
    stats_limit: int | None = None
    attribution_limit: int | None = None

    def load_model(self, artifacts: Path | None = None) -> nn.Module:
        """The committed classifier in eval mode (weights loaded with weights_only=True)."""
        import torch

        model = self.build_model()
        path = (artifacts or self.artifacts) / "model.pt"
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()


_DATASETS: dict[str, DemoDataset] = {}


def register(entry: DemoDataset) -> DemoDataset:
    """Make ``entry`` available as ``--dataset <entry.name>``."""
    if entry.name in _DATASETS and _DATASETS[entry.name] is not entry:
        raise ValueError(f"a demo data set named {entry.name!r} is already registered")
    _DATASETS[entry.name] = entry
    return entry


def datasets() -> dict[str, DemoDataset]:
    """Registered demo data sets by name, sorted."""
    return dict(sorted(_DATASETS.items()))
