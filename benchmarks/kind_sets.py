"""Feature rows for the kind-attribution benchmarks: fit, attribution-only and report sets.

A demo's bundle gives the feature extractor. Challenge sets are made with the seeds
``gradsentry demo build`` and ``demo report`` give them, from the first N images of a
split, and kept in the set cache, so a rerun with the same N reuses them (the report's own
sets, on 2,000 test images, are other cache entries). Shared by ``kind_attribution.py``,
``kind_ceiling.py`` and ``head_combination.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detectors.bundle import load_bundle
from detectors.challenges import parse_spec
from detectors.demo.datasets import DemoDataset, datasets
from detectors.evaluate.run import SET_SEEDS
from detectors.features import FeatureExtractor
from detectors.fitting import ATTRIBUTION_SEEDS
from detectors.setcache import SetCache
from detectors.views import VIEWS as LIBRARY_VIEWS

#: Attacks that cost most of a run (CW-L2 ~0.6 s of CPU per image, DeepFool ~0.3 s).
SLOW = ("cw", "deepfool", "square")
#: Seeds of fit set i (1 + i: ``fit_detector``'s default seed 0, plus one), attribution-only
#: set i (ATTRIBUTION_SEED + i) and report set i (REPORT_SEED + i), as the library makes them.
FIT_SEED, ATTRIBUTION_SEED, REPORT_SEED = 1, ATTRIBUTION_SEEDS, SET_SEEDS


#: Transforms of an input whose features may be appended for the attribution head only:
#: images float32 [N, C, H, W] in [0, 1] -> the same shape; the library's views
#: (``detectors.views``: "stretch" spreads each image over [0, 1], undoing brightness,
#: contrast, haze; "median" is a 3x3 median filter, removing pixel noise).
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    name: (lambda x, view=view: view(torch.from_numpy(x)).numpy())
    for name, view in LIBRARY_VIEWS.items()
}


@dataclass
class Rows:
    """Feature rows X float [N, F], features of the views V [N, k*F] (k views, k may be 0),
    with per row its kind and the set it came from."""

    X: np.ndarray
    V: np.ndarray
    kinds: np.ndarray
    groups: np.ndarray

    @classmethod
    def join(cls, parts: Iterable[Rows]) -> Rows:
        parts = list(parts)
        fields = ("X", "V", "kinds", "groups")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def where(self, rows: np.ndarray) -> Rows:
        return Rows(self.X[rows], self.V[rows], self.kinds[rows], self.groups[rows])

    @property
    def XV(self) -> np.ndarray:
        """[N, (k+1)*F]: the features and their views', side by side."""
        return np.hstack([self.X, self.V])


class KindSets:
    """The demo's model, extractor and splits; ``rows`` turns a spec into feature rows."""

    def __init__(
        self, dataset: str, data: Path | None, cache: Path, views: tuple[str, ...] = ()
    ) -> None:
        self.views = views
        self.entry: DemoDataset = datasets()[dataset]
        self.splits = self.entry.load_splits(data or self.entry.default_data)
        self.model = self.entry.load_model()
        manifest = load_bundle(self.entry.artifacts / "bundle").manifest
        self.ext = FeatureExtractor.from_dict(self.model, manifest["feature_spec"])
        self.cache = SetCache(cache)

    def images(self, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``limit`` images [n, 1, 28, 28] and labels [n] of a split."""
        s = self.splits[split]
        return s.images[:limit], s.labels[:limit]

    @property
    def log_columns(self) -> np.ndarray:
        """bool [(k+1)*F]: which columns of ``Rows.XV`` H takes the log of."""
        return np.tile(self.ext.log_columns, 1 + len(self.views))

    def features(
        self, images: np.ndarray, progress: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(X [N, F], V [N, k*F]) of images [N, 1, H, W]."""
        X = self.ext.extract_images(images, progress=progress).features
        V = [self.ext.extract_images(VIEWS[v](images)).features for v in self.views]
        return X, np.hstack(V) if V else np.empty((len(X), 0))

    def clean(self, split: str, limit: int) -> Rows:
        images, _ = self.images(split, limit)
        X, V = self.features(images)
        return Rows(X, V, np.full(len(X), "clean"), np.full(len(X), "clean"))

    def rows(self, spec: str, split: str, limit: int, seed: int, group: str | None = None) -> Rows:
        """Features of the set ``spec`` makes from a split's first ``limit`` images."""
        images, labels = self.images(split, limit)
        made = self.cache.generate(
            parse_spec(spec), self.model, images, labels, seed=seed, progress=True
        )
        X, V = self.features(made, progress=spec)
        kind = parse_spec(spec).kind
        return Rows(X, V, np.full(len(X), kind), np.full(len(X), group or spec))

    def fit_rows(self, limit: int) -> tuple[Rows, Rows]:
        """(clean + fit challenges, attribution-only generators) on the detector split."""
        fit = [self.clean("detector", limit)]
        fit += [
            self.rows(spec, "detector", limit, FIT_SEED + i)
            for i, spec in enumerate(self.entry.fit_challenges)
        ]
        extra = [
            self.rows(spec, "detector", limit, ATTRIBUTION_SEED + i)
            for i, spec in enumerate(self.entry.attribution_challenges)
        ]
        return Rows.join(fit), Rows.join(extra)

    def unseen_report_sets(self, skip_slow: bool = False) -> list[tuple[int, str, str]]:
        """(index, name, spec) of the report's sets that H was not fitted on."""
        seen = set(self.entry.fit_challenges)
        return [
            (i, name, spec)
            for i, (name, spec) in enumerate(self.entry.report_sets())
            if spec not in seen and not (skip_slow and parse_spec(spec).name in SLOW)
        ]


def add_set_arguments(
    parser: argparse.ArgumentParser, dataset: str, limit: int, fit_limit: int | None = 1000
) -> None:
    """The options the set benchmarks take: which demo, its data and set cache, how many
    test and detector-split images (``fit_limit`` None: all), whether to leave out the slow
    attacks."""
    parser.add_argument("--dataset", choices=sorted(datasets()), default=dataset)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--cache", type=Path, default=Path(".cache/sets"))
    parser.add_argument("--limit", type=int, default=limit, help="test images per set")
    parser.add_argument("--fit-limit", type=int, default=fit_limit, help="detector-split images")
    parser.add_argument("--skip-slow", action="store_true", help="leave out CW, DeepFool, Square")
    parser.add_argument("--json", type=Path)
