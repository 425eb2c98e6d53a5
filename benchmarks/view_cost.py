"""What the views cost a request: the feature vector with and without them, side by side.

Each view (``detectors.views``) adds one forward pass and no backward to a request. Timed
on the same inputs, interleaved round-robin, per model:

  fashion            the Fashion-MNIST demo's bundle (both views), batch 64 at 1×28×28
  efficientnet-lite0 the pretrained ImageNet EfficientNet-Lite0, batch 8 at 3×224×224, the
                     probe on all parameters and the logit statistics (no statistics to
                     fit), with and without median + stretch

Prints, per model, seconds per call of both paths and their ratio within each round:
median (min–max). ``--clock cpu`` reads the process's CPU seconds (robust to other load).

    python benchmarks/view_cost.py [--models fashion efficientnet-lite0] [--repeats 7]
                                   [--clock wall|cpu] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.probe_cost import CLOCKS, efficientnet_lite0, round_ratios, spread
from detectors.bundle import load_bundle
from detectors.demo.datasets import FASHION
from detectors.features import FeatureExtractor

VIEWS = ("median", "stretch")


def fashion() -> tuple[FeatureExtractor, FeatureExtractor, torch.Tensor]:
    """(without views, with the bundle's views, inputs [64, 1, 28, 28])."""
    model = FASHION.load_model()
    spec = dict(load_bundle(FASHION.artifacts / "bundle").manifest["feature_spec"])
    with_views = FeatureExtractor.from_dict(model, spec)
    without = FeatureExtractor.from_dict(model, {k: v for k, v in spec.items() if k != "views"})
    return (
        without,
        with_views,
        torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
    )


def efficientnet() -> tuple[FeatureExtractor, FeatureExtractor, torch.Tensor]:
    """(without views, with both, inputs [8, 3, 224, 224] in [0, 1])."""
    model = efficientnet_lite0()
    make = lambda views: FeatureExtractor(  # noqa: E731
        model, losses=("all_ones",), layers=(), novelty=False, views=views
    )
    x = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return make(()), make(VIEWS), x


MODELS = {"fashion": fashion, "efficientnet-lite0": efficientnet}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    now = CLOCKS[args.clock]
    results = {}
    for name in args.models:
        without, with_views, x = MODELS[name]()
        paths = {"features": without.extract, "features+views": with_views.extract}
        # Warm-up, and the check that views only add columns: the rest is the same vector
        # (the same kernels on the same input; 1e-6 relative allows a reordered reduction).
        base, full = (fn(x).features for fn in paths.values())
        added = full.shape[1] - base.shape[1]
        assert added == len(with_views.views), (added, with_views.views)
        np.testing.assert_allclose(full[:, : base.shape[1]], base, rtol=1e-6, atol=0)
        samples: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.repeats):
            for path, fn in paths.items():
                t0 = now()
                fn(x)
                samples[path].append(now() - t0)
        ratios = round_ratios(samples, "features+views", "features")
        results[name] = {
            "batch": len(x),
            "views": list(with_views.views),
            "columns_added": added,
            "seconds": {k: statistics.median(v) for k, v in samples.items()},
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        }
        print(
            f"{name:<20} batch {len(x):>3}: features {results[name]['seconds']['features']:.4f} s, "
            f"+views {results[name]['seconds']['features+views']:.4f} s ({args.clock} clock); "
            f"with views / without: {spread(ratios)}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"clock": args.clock, "models": results}, indent=1))


if __name__ == "__main__":
    main()
