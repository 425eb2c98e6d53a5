"""Which kind-attribution head names unseen families right? Variants measured on a demo.

Both variants share the demo bundle's features and detection heads (so the same inputs
are flagged); only the attribution head changes: trained on the fit challenges alone, or
also on the data set's attribution-only generators (as ``gradsentry demo build`` does).
Scored like the report's kind confusion: the share of flagged inputs of unseen sets
attributed to their true family, pooled; plus how well each fit set is named in sample.

    python benchmarks/kind_attribution.py [--dataset mnist|fashion] [--limit N]
        [--fit-limit N] [--skip-slow] [--json out.json]

Challenge sets come from the seeded cache (``--cache``), as in ``gradsentry demo report``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from detectors.bundle import load_bundle
from detectors.challenges import parse_spec
from detectors.demo.datasets import datasets
from detectors.detector import ReliabilityDetector
from detectors.features import FeatureExtractor
from detectors.setcache import SetCache

SLOW = ("cw", "deepfool", "square")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(datasets()), default="mnist")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--cache", type=Path, default=Path(".cache/sets"))
    parser.add_argument("--limit", type=int, default=300, help="test images per set")
    parser.add_argument("--fit-limit", type=int, default=1000, help="detector-split images")
    parser.add_argument("--skip-slow", action="store_true", help="leave out CW, DeepFool, Square")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    entry = datasets()[args.dataset]
    splits = entry.load_splits(args.data or entry.default_data)
    model = entry.load_model()
    manifest = load_bundle(entry.artifacts / "bundle").manifest
    ext = FeatureExtractor.from_dict(model, manifest["feature_spec"])
    cache = SetCache(args.cache)
    det, test = splits["detector"], splits["test"]
    fi, fl = det.images[: args.fit_limit], det.labels[: args.fit_limit]
    ti, tl = test.images[: args.limit], test.labels[: args.limit]

    def feats(spec: str, images, labels, seed: int) -> tuple[np.ndarray, np.ndarray]:
        made = cache.generate(parse_spec(spec), model, images, labels, seed=seed, progress=True)
        out = ext.extract_images(made, progress=spec)
        return out.features, out.logits.argmax(1)

    t0 = time.time()
    fit_x = [ext.extract_images(fi).features]
    fit_k = ["clean"] * len(fi)
    fit_g = ["clean"] * len(fi)
    for i, spec in enumerate(entry.fit_challenges):
        x, _ = feats(spec, fi, fl, 1 + i)
        fit_x.append(x)
        fit_k += [parse_spec(spec).kind] * len(x)
        fit_g += [spec] * len(x)
    extra_x, extra_k, extra_g = [], [], []
    for i, spec in enumerate(entry.attribution_challenges):
        x, _ = feats(spec, fi, fl, 100 + i)
        extra_x.append(x)
        extra_k += [parse_spec(spec).kind] * len(x)
        extra_g += [spec] * len(x)
    fit_X, fit_K, fit_G = np.concatenate(fit_x), np.array(fit_k), np.array(fit_g)
    ex_X, ex_K, ex_G = np.concatenate(extra_x), np.array(extra_k), np.array(extra_g)
    detector = ReliabilityDetector(log_columns=ext.log_columns).fit(fit_X, fit_K)
    print(f"fit features {time.time() - t0:.0f}s", flush=True)

    seen = set(entry.fit_challenges)
    test_x, test_fam, test_set = [], [], []
    for i, (name, spec) in enumerate(entry.report_sets()):
        if spec in seen or (args.skip_slow and parse_spec(spec).name in SLOW):
            continue
        x, _ = feats(spec, ti, tl, 1000 + i)
        flagged = detector.predict(x)
        test_x.append(x[flagged])
        test_fam += [parse_spec(spec).kind] * int(flagged.sum())
        test_set += [name] * int(flagged.sum())
    T_X, T_F, T_S = np.concatenate(test_x), np.array(test_fam), np.array(test_set)
    print(f"all features {time.time() - t0:.0f}s; {len(T_X)} flagged unseen inputs", flush=True)

    kinds = np.array(detector.kinds_)
    results: dict[str, dict] = {}

    def report(name: str, det: ReliabilityDetector) -> None:
        scores = det.kind_scores(T_X)
        pred = kinds[np.argmax(np.stack([scores[k] for k in kinds], axis=1), axis=1)]
        hit = pred == T_F
        per_fam = {f: float(hit[T_F == f].mean()) for f in kinds if (T_F == f).any()}
        per_set = {s: float(hit[T_S == s].mean()) for s in dict.fromkeys(T_S)}
        confusion = {f: {k: int(np.sum((T_F == f) & (pred == k))) for k in kinds} for f in kinds}
        fitted = {}
        for g in dict.fromkeys(np.concatenate([fit_G, ex_G])):
            if g == "clean":
                continue
            rows = np.concatenate([fit_G, ex_G]) == g
            sc = det.kind_scores(np.concatenate([fit_X, ex_X])[rows])
            named = kinds[np.argmax(np.stack([sc[k] for k in kinds], axis=1), axis=1)]
            fitted[g] = float((named == np.concatenate([fit_K, ex_K])[rows]).mean())
        results[name] = {
            "overall": float(hit.mean()),
            "family": per_fam,
            "confusion": confusion,
            "sets": per_set,
            "fit_sets_in_sample": fitted,
        }
        fams = "  ".join(f"{f} {v:.1%}" for f, v in per_fam.items())
        print(f"{name:40s} {hit.mean():.1%}  {fams}", flush=True)
        print("   fit sets named right (in sample):", fitted, flush=True)

    report("fit kinds only", detector)
    extra = ReliabilityDetector(log_columns=ext.log_columns).fit(fit_X, fit_K, ex_X, ex_K)
    report("fit + attribution-only kinds", extra)
    worst = sorted(results["fit + attribution-only kinds"]["sets"].items(), key=lambda kv: kv[1])
    print("worst sets:", ", ".join(f"{s} {v:.0%}" for s, v in worst[:12]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
