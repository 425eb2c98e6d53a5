"""Which H generalises best? Strategies and feature groups, measured on the demo.

Fits every variant on the demo's detector split (clean vs the demo's fit challenges)
with the bundled demo's exact features, then scores the 2,000 test digits and every
set of the demo report. Prints, per variant: mean AUROC per family, over the sets H
never saw, over the unseen *harmful* ones (OOD, or classifier accuracy < 90%), and the
false-positive rate on clean test digits at the calibrated threshold.

    python benchmarks/detector_ablation.py [--data PATH] [--limit N] [--json out.json]

Challenge sets come from the same seeded cache as ``gradsentry demo report``, so after
a report run nothing is regenerated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from detectors.bundle import load_bundle
from detectors.challenges import parse_spec
from detectors.demo import ARTIFACTS, load_demo_model
from detectors.demo.sets import FIT_CHALLENGES, report_sets
from detectors.demo.train import load_mnist_npz
from detectors.detector import ReliabilityDetector
from detectors.features import FeatureExtractor
from detectors.setcache import SetCache

# feature groups: which schema groups each variant may read
GROUPS = {
    "gradients only": {"gradient"},
    "gradients + logit stats": {"gradient", "logit"},
    "all but gradients": {"logit", "activation"},
    "all but views": {"gradient", "logit", "activation", "novelty"},
    "all features": {"gradient", "logit", "activation", "novelty", "view"},
}
STRATEGIES = ("per_kind", "multiclass", "binary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mnist10k.npz"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/sets"))
    parser.add_argument("--limit", type=int, help="first N test digits only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    splits = load_mnist_npz(str(args.data))
    model = load_demo_model()
    manifest = load_bundle(ARTIFACTS / "bundle").manifest
    ext = FeatureExtractor.from_dict(model, manifest["feature_spec"])
    groups = np.array([c["group"] for c in ext.schema])
    cache = SetCache(args.cache)
    det, test = splits["detector"], splits["test"]
    n = args.limit or len(test.images)
    images, labels = test.images[:n], test.labels[:n]

    # Fit rows: exactly what fit_detector saw (same seeds, same cache entries).
    fit_x = [ext.extract_images(det.images).features]
    fit_k = ["clean"] * len(det.images)
    for i, spec in enumerate(FIT_CHALLENGES):
        ch = parse_spec(spec)
        made = cache.generate(ch, model, det.images, det.labels, seed=1 + i)
        fit_x.append(ext.extract_images(made).features)
        fit_k += [ch.kind] * len(made)
    fit_X, fit_y = np.concatenate(fit_x), np.array(fit_k)

    clean = ext.extract_images(images)
    sets = []
    for i, (name, spec) in enumerate(report_sets()):
        ch = parse_spec(spec)
        made = cache.generate(ch, model, images, labels, seed=1000 + i, progress=True)
        out = ext.extract_images(made, progress=name)
        acc = None if ch.kind == "ood" else float((out.logits.argmax(1) == labels).mean())
        sets.append((name, ch, out.features, acc))

    results = {}
    head = ("variant", "adv", "corr5", "ood", "unseen", "harmful", "FPR")
    print(f"{head[0]:<42} " + " ".join(f"{h:>7}" for h in head[1:]))
    for gname, allowed in GROUPS.items():
        cols = np.isin(groups, list(allowed))
        for strategy in STRATEGIES:
            h = ReliabilityDetector(
                strategy=strategy, calibration_fraction=0.5, log_columns=ext.log_columns[cols]
            )
            h.fit(fit_X[:, cols], fit_y)
            s0 = h.predict_proba(clean.features[:, cols])
            row = {"fpr": float((s0 >= h.threshold_).mean()), "sets": {}}
            for name, ch, feats, acc in sets:
                s1 = h.predict_proba(feats[:, cols])
                auc = roc_auc_score(np.r_[np.zeros(len(s0)), np.ones(len(s1))], np.r_[s0, s1])
                row["sets"][name] = {
                    "auroc": float(auc),
                    "kind": ch.kind,
                    "accuracy": acc,
                    "seen": ch.spec in {parse_spec(s).spec for s in FIT_CHALLENGES},
                }
            summary = _summarise(row["sets"])
            row.update(summary)
            results[f"{gname} / {strategy}"] = row
            print(
                f"{gname + ' / ' + strategy:<42} {summary['adversarial']:6.4f} "
                f"{summary['corrupted_s5']:6.4f} {summary['ood']:6.4f} {summary['unseen']:7.4f} "
                f"{summary['unseen_harmful']:7.4f} {row['fpr']:6.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _summarise(sets: dict[str, dict]) -> dict[str, float]:
    def mean(pred) -> float:
        vals = [s["auroc"] for name, s in sets.items() if pred(name, s)]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "adversarial": mean(lambda _n, s: s["kind"] == "adversarial"),
        "corrupted_s5": mean(lambda n, s: s["kind"] == "corrupted" and n.endswith(" s5")),
        "ood": mean(lambda _n, s: s["kind"] == "ood"),
        "unseen": mean(lambda _n, s: not s["seen"]),
        "unseen_harmful": mean(
            lambda _n, s: not s["seen"] and (s["kind"] == "ood" or s["accuracy"] < 0.9)
        ),
    }


if __name__ == "__main__":
    main()
