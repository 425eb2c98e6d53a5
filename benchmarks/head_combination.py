"""How H's heads are combined, and what more OOD generators in the fit buy: four variants
of the detection heads on the same features, scored on one demo's report sets.

  per-kind max         what the bundles ship: one head per kind (clean against the kind's
                       fitted generators), P(challenging) = the largest head probability
  per-kind max +ood    the same, with ``--extra-ood`` sources as more rows of the OOD head
  per-generator rank   one head per fitted generator; each head's probability becomes its
                       clean tail rank, -log((#clean calibration rows scoring >= p + 1) /
                       (n + 1)), and the score is the largest rank: every head then speaks
                       in the same unit, a false-positive rate on clean inputs
  per-generator rank +ood   the same, with one more head per ``--extra-ood`` source

The heads are refitted here on the bundle's own feature extractor (its statistics), on the
demo's detector split, with the fit challenges' seeds of ``demo build``; the clean
calibration rows are the ones ``ReliabilityDetector`` holds out. Scored: the first
``--limit`` test images clean, every OOD and corruption set of the report at severity 5
on them, and every attack on the first ``--attack-limit``. Prints AUROC per set and the
family means over the sets none of the variants was fitted on; AUROC only (no threshold:
the rank variants would need a second clean split to calibrate one).

    python benchmarks/head_combination.py [--dataset fashion] [--limit 2000]
        [--attack-limit 500] [--fit-limit N] [--extra-ood glyphs] [--skip-slow]
        [--data PATH] [--cache DIR] [--json out.json] [--plot out.png]

Sets come from ``kind_sets.KindSets``: the seeds of ``demo build`` and ``demo report``, and
the same set cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.kind_sets import FIT_SEED, REPORT_SEED, KindSets, add_set_arguments
from detectors.challenges import parse_spec
from detectors.detector.estimator import ReliabilityDetector

#: Extra OOD source i is made with seed EXTRA_SEEDS + i (the fit challenges use 1, 2, 3).
EXTRA_SEEDS = 500
#: Breaks ties between inputs at the same rank (all beyond every calibration row) by the
#: largest raw probability; smaller than the smallest step between two ranks,
#: log((n + 1) / n) ~ 1e-3 for n = 1,000 calibration rows.
TIE_BREAK = 1e-4
Scorer = Callable[[np.ndarray], np.ndarray]


def tail_rank(reference: np.ndarray, p: np.ndarray) -> np.ndarray:
    """-log((#reference >= p + 1) / (n + 1)) for each of p float [M]; reference float [n]
    (a head's probabilities on clean calibration rows). 0 below every reference row,
    log(n + 1) above them all."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    at_least = len(ref) - np.searchsorted(ref, np.asarray(p, dtype=np.float64), side="left")
    return -np.log((at_least + 1) / (len(ref) + 1))


def _head(
    clean: np.ndarray, rows: list[tuple[np.ndarray, str]], log_columns
) -> ReliabilityDetector:
    X = np.concatenate([clean, *(r for r, _ in rows)])
    kinds = ["clean"] * len(clean) + [k for r, k in rows for _ in range(len(r))]
    detector = ReliabilityDetector(
        strategy="per_kind",
        calibration_fraction=0.5,  # as `demo build` fits the bundles
        log_columns=log_columns,
        random_state=0,
        attribution=False,
    )
    return detector.fit(X, np.array(kinds))


def per_kind(clean: np.ndarray, fits: dict[str, np.ndarray], log_columns: np.ndarray) -> Scorer:
    """The shipped combination: one head per kind, max of probabilities."""
    detector = _head(clean, [(F, parse_spec(s).kind) for s, F in fits.items()], log_columns)
    return lambda F: detector.scores(F).probability


def generator_heads(
    clean: np.ndarray, fits: dict[str, np.ndarray], log_columns: np.ndarray
) -> dict[str, tuple[ReliabilityDetector, np.ndarray]]:
    """{generator spec: (its own head, clean against it; the head's probabilities on its
    held-out clean calibration rows)}. With one generator per kind these are exactly the
    shipped per-kind heads."""
    heads = {}
    for spec, F in fits.items():
        detector = _head(clean, [(F, parse_spec(spec).kind)], log_columns)
        heads[spec] = (detector, detector.scores(clean[detector.calibration_rows_]).probability)
    return heads


def per_generator_rank(heads: dict[str, tuple[ReliabilityDetector, np.ndarray]]) -> Scorer:
    """One head per generator, each on its clean tail-rank scale; max of ranks."""

    def score(F: np.ndarray) -> np.ndarray:
        probs = [d.scores(F).probability for d, _ in heads.values()]
        ranks = [tail_rank(ref, p) for (_, ref), p in zip(heads.values(), probs, strict=True)]
        return np.max(ranks, axis=0) + TIE_BREAK * np.max(probs, axis=0)

    return score


def auroc(clean: np.ndarray, challenged: np.ndarray) -> float:
    """AUROC of scores on challenged inputs [M] against clean ones [N]."""
    y = np.r_[np.zeros(len(clean)), np.ones(len(challenged))]
    return float(roc_auc_score(y, np.r_[clean, challenged]))


def plot(results: dict[str, dict], title: str, path: Path) -> None:
    """Grouped bars: AUROC per variant on every set some variant scores below 0.995."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        n
        for n in next(iter(results.values()))["sets"]
        if min(r["sets"][n] for r in results.values()) < 0.995
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 3.8))
    width = 0.8 / len(results)
    for i, (label, result) in enumerate(results.items()):
        xs = np.arange(len(names)) + (i - (len(results) - 1) / 2) * width
        ax.bar(xs, [result["sets"][n] for n in names], width, label=label)
    lowest = min(r["sets"][n] for r in results.values() for n in names) if names else 0.9
    ax.set_ylim(max(0.0, lowest - 0.02), 1.0)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("AUROC against clean test images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # clear of the bars
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # the whole detector split by default, as `demo build` fits the bundles
    add_set_arguments(parser, "fashion", 2000, fit_limit=None)
    parser.add_argument("--attack-limit", type=int, default=500, help="attacked test images")
    parser.add_argument("--extra-ood", nargs="*", default=["glyphs"], metavar="SOURCE")
    parser.add_argument("--plot", type=Path, help="PNG: the sets where the variants differ")
    args = parser.parse_args(argv)

    ks = KindSets(args.dataset, args.data, args.cache)
    entry = ks.entry
    clean = ks.clean("detector", args.fit_limit).X
    fits = {
        s: ks.rows(s, "detector", args.fit_limit, FIT_SEED + i).X
        for i, s in enumerate(entry.fit_challenges)
    }
    extra = {
        f"ood:source={s}": ks.rows(f"ood:source={s}", "detector", args.fit_limit, EXTRA_SEEDS + i).X
        for i, s in enumerate(args.extra_ood)
    }
    test_clean = ks.clean("test", args.limit).X
    sets: dict[str, tuple[str, np.ndarray]] = {}
    for i, name, spec in ks.unseen_report_sets(args.skip_slow):
        kind = parse_spec(spec).kind
        if kind == "corrupted" and "severity=5" not in spec:
            continue
        n = args.attack_limit if kind == "adversarial" else args.limit
        sets[name] = (kind, ks.rows(spec, "test", n, REPORT_SEED + i).X)

    cols = ks.ext.log_columns
    heads = generator_heads(clean, {**fits, **extra}, cols)
    variants: dict[str, Scorer] = {
        "per-kind max": per_kind(clean, fits, cols),
        "per-kind max +ood": per_kind(clean, {**fits, **extra}, cols),
        "per-generator rank": per_generator_rank({s: heads[s] for s in fits}),
        "per-generator rank +ood": per_generator_rank(heads),
    }
    results: dict[str, dict] = {}
    for label, score in variants.items():
        c = score(test_clean)
        aurocs = {name: auroc(c, score(F)) for name, (_, F) in sets.items()}
        means = {
            kind: float(np.mean([aurocs[n] for n, (k, _) in sets.items() if k == kind]))
            for kind in ("adversarial", "corrupted", "ood")
            if any(k == kind for k, _ in sets.values())
        }
        means["all"] = float(np.mean(list(aurocs.values())))
        results[label] = {"sets": aurocs, "means": means}
    # Each generator's head alone (its probability): which head catches which set.
    alone = {}
    for spec, (detector, _) in heads.items():
        c = detector.scores(test_clean).probability
        alone[spec] = {n: auroc(c, detector.scores(F).probability) for n, (_, F) in sets.items()}

    width = max(len(n) for n in sets)
    print(f"{entry.title}: AUROC, {args.limit} clean test images ({args.attack_limit} attacked)")
    print(f"{'set':{width}s} " + " ".join(f"{v:>24s}" for v in variants))
    for name in [*sets, "adversarial", "corrupted", "ood", "all"]:
        vals = [
            results[v]["sets"].get(name, results[v]["means"].get(name, float("nan")))
            for v in variants
        ]
        label = f"mean {name}" if name not in sets else name
        print(f"{label:{width}s} " + " ".join(f"{x:24.3f}" for x in vals))
    hard = [n for n in sets if min(r["sets"][n] for r in results.values()) < 0.995]
    print("\neach generator's head alone, on the sets some variant scores below 0.995:")
    print(f"{'set':{width}s} " + " ".join(f"{s[:24]:>24s}" for s in alone))
    for name in hard:
        print(f"{name:{width}s} " + " ".join(f"{alone[s][name]:24.3f}" for s in alone))
    if args.plot:
        plot(results, f"{entry.title}: AUROC by combination of H's heads", args.plot)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "limit": args.limit,
                    "attack_limit": args.attack_limit,
                    "fit_challenges": list(entry.fit_challenges),
                    "extra_ood": list(args.extra_ood),
                    "variants": results,
                    "heads_alone": alone,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
