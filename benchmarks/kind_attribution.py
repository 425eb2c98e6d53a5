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
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.kind_sets import REPORT_SEED, KindSets, Rows, add_set_arguments
from detectors.detector import ReliabilityDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser, "mnist", 300)
    args = parser.parse_args()

    sets = KindSets(args.dataset, args.data, args.cache)
    t0 = time.time()
    fit, extra = sets.fit_rows(args.fit_limit)
    fit_X, fit_K, fit_G = fit.X, fit.kinds, fit.groups
    ex_X, ex_K, ex_G = extra.X, extra.kinds, extra.groups
    detector = ReliabilityDetector(log_columns=sets.ext.log_columns).fit(fit_X, fit_K)
    print(f"fit features {time.time() - t0:.0f}s", flush=True)

    flagged = []
    for i, name, spec in sets.unseen_report_sets(args.skip_slow):
        r = sets.rows(spec, "test", args.limit, REPORT_SEED + i, group=name)
        flagged.append(r.where(detector.predict(r.X)))
    test = Rows.join(flagged)
    T_X, T_F, T_S = test.X, test.kinds, test.groups
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
    extra = ReliabilityDetector(log_columns=sets.ext.log_columns).fit(fit_X, fit_K, ex_X, ex_K)
    report("fit + attribution-only kinds", extra)
    worst = sorted(results["fit + attribution-only kinds"]["sets"].items(), key=lambda kv: kv[1])
    print("worst sets:", ", ".join(f"{s} {v:.0%}" for s, v in worst[:12]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
