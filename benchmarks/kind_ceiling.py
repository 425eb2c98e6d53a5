"""How far can more generators take kind attribution? Leave-one-group-out on a demo.

The committed attribution head learns what a family is from a handful of generators and
is then asked to name families' unseen members (54% right on both demos). This measures
what the same head on the same features reaches when it is trained on every report set
but one group (a corruption type, an attack, an OOD source), made from detector-split
images, and asked to name the held-out group's flagged test inputs. It also gives the
in-family figure (every group in training, other images), the most this head and these
features can do. Detection (which inputs are flagged) is the fit challenges' alone.

``--views stretch median`` also gives the attribution head the features of transformed
copies of each input (``kind_sets.VIEWS``): what an input looks like once its intensity
range is restored, or its pixel noise removed, tells a corruption from an outlier.

    python benchmarks/kind_ceiling.py [--dataset mnist|fashion] [--limit N]
        [--train-limit N] [--fit-limit N] [--skip-slow] [--views V ...]
        [--classifier logistic|mlp|gbm] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.kind_sets import REPORT_SEED, VIEWS, KindSets, Rows, add_set_arguments
from detectors.challenges import parse_spec
from detectors.detector import ReliabilityDetector
from detectors.detector.classifiers import CLASSIFIERS

#: Seeds of the report sets made from detector-split images, for training only.
TRAIN_SEED = 2000


def group_of(name: str, spec: str) -> str:
    """The group a report set is held out with: its corruption type, attack or OOD set."""
    challenge = parse_spec(spec)
    if challenge.kind == "ood":
        return name
    if "type" in challenge.params:
        return str(challenge.params["type"])
    return challenge.name


def named_right(det: ReliabilityDetector, rows: Rows) -> np.ndarray:
    """bool [N]: the head's most likely kind is the row's true family."""
    kinds = np.array(det.kinds_)
    scores = det.kind_scores(rows.XV)
    pred = kinds[np.argmax(np.stack([scores[k] for k in kinds], axis=1), axis=1)]
    return pred == rows.kinds


def summary(hits: dict[str, np.ndarray], kinds: dict[str, str]) -> dict:
    """Pooled and per-family share named right, over the groups' flagged inputs."""
    pooled = np.concatenate(list(hits.values()))
    family = {
        f: float(np.concatenate([h for g, h in hits.items() if kinds[g] == f]).mean())
        for f in dict.fromkeys(kinds.values())
    }
    return {"overall": float(pooled.mean()), "n": len(pooled), "family": family}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser, "fashion", 500)
    parser.add_argument(
        "--train-limit", type=int, default=500, help="detector-split images per set"
    )
    parser.add_argument(
        "--classifier",
        choices=sorted(CLASSIFIERS),
        default="logistic",
        help="the attribution head's classifier (the committed bundles use logistic)",
    )
    parser.add_argument(
        "--views",
        nargs="*",
        choices=sorted(VIEWS),
        default=[],
        help="also give the attribution head the features of these transforms of the input",
    )
    args = parser.parse_args()

    sets = KindSets(args.dataset, args.data, args.cache, tuple(args.views))
    t0 = time.time()
    fit, extra = sets.fit_rows(args.fit_limit)
    detector = ReliabilityDetector(log_columns=sets.ext.log_columns).fit(fit.X, fit.kinds)

    train, test, kinds = [], [], {}
    for i, name, spec in sets.unseen_report_sets(args.skip_slow):
        group = group_of(name, spec)
        kinds[group] = parse_spec(spec).kind
        r = sets.rows(spec, "test", args.limit, REPORT_SEED + i, group=group)
        test.append(r.where(detector.predict(r.X)))
        train.append(sets.rows(spec, "detector", args.train_limit, TRAIN_SEED + i, group=group))
    train_rows, test_rows = Rows.join(train), Rows.join(test)
    print(f"features {time.time() - t0:.0f}s; {len(test_rows.X)} flagged unseen inputs")

    def head(rows: Rows) -> ReliabilityDetector:
        more = Rows.join([extra, rows])
        det = ReliabilityDetector(classifier=args.classifier, log_columns=sets.log_columns)
        return det.fit(fit.XV, fit.kinds, more.XV, more.kinds)

    def per_group(det: ReliabilityDetector) -> dict[str, np.ndarray]:
        return {g: named_right(det, test_rows.where(test_rows.groups == g)) for g in kinds}

    committed = per_group(head(train_rows.where(np.zeros(len(train_rows.X), bool))))
    in_family = per_group(head(train_rows))
    held_out = {}
    for g in tqdm(kinds, desc="held-out groups"):
        det = head(train_rows.where(train_rows.groups != g))
        held_out[g] = named_right(det, test_rows.where(test_rows.groups == g))

    results = {
        "fit + attribution-only generators (as committed)": summary(committed, kinds),
        "+ every other group (leave one group out)": summary(held_out, kinds),
        "+ every group, other images (in family)": summary(in_family, kinds),
    }
    for name, r in results.items():
        fams = "  ".join(f"{f} {v:.1%}" for f, v in r["family"].items())
        print(f"{name:52s} {r['overall']:.1%} of {r['n']}  {fams}")
    print("held out, per group:")
    for g in sorted(kinds, key=lambda g: held_out[g].mean()):
        n = len(held_out[g])
        print(
            f"  {g:36s} {kinds[g]:12s} n={n:5d}  held out {held_out[g].mean():6.1%}  "
            f"in family {in_family[g].mean():6.1%}  committed {committed[g].mean():6.1%}"
        )
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        per = {
            g: {
                "kind": kinds[g],
                "held_out": float(held_out[g].mean()),
                "in_family": float(in_family[g].mean()),
                "committed": float(committed[g].mean()),
                "n": len(held_out[g]),
            }
            for g in kinds
        }
        args.json.write_text(json.dumps({**results, "groups": per}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
