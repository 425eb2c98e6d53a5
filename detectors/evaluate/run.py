"""Run an evaluation: gradsentry and every baseline on clean test inputs and named sets.

Each named set is a challenge applied to (or, for OOD, sized like) the clean test
inputs. A set counts as *seen* when the bundle was fitted on exactly that challenge
spec; the report keeps unseen sets apart, since users meet kinds H never saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from detectors.challenges import Challenge
from detectors.evaluate.baselines import create
from detectors.evaluate.baselines.base import batches, model_device
from detectors.evaluate.report import CleanScores, Report, SetScores, build_report
from detectors.sentry import Sentry
from detectors.setcache import SetCache

PRIMARY = "gradsentry"
BASELINES: tuple[str, ...] = ("msp", "odin", "energy", "mahalanobis", "gradnorm", "knn", "vim")

#: Set i of an evaluation is made with seed SET_SEEDS + i (set caches key on it).
SET_SEEDS = 1000


class Verdict(NamedTuple):
    """The primary method's verdicts on one set: flagged bool [n], kinds object [n]."""

    flagged: np.ndarray
    kinds: np.ndarray


@dataclass(frozen=True)
class EvalSet:
    """A named challenge set to evaluate."""

    name: str
    challenge: Challenge


def evaluate(
    sentry: Sentry,
    images: np.ndarray,
    labels: np.ndarray,
    sets: Sequence[EvalSet],
    *,
    baseline_fit: tuple[np.ndarray, np.ndarray] | None = None,
    baselines: Sequence[str] = BASELINES,
    seed: int = SET_SEEDS,
    batch_size: int = 128,
    progress: bool = True,
    cache: SetCache | None = None,
    meta: Mapping[str, object] | None = None,
    fpr_images: np.ndarray | None = None,
) -> Report:
    """Score clean test ``images`` [N, C, H, W] (``labels`` [N]) and every set.

    baseline_fit: clean labelled (images, labels) to fit baselines that need fitting
    (Mahalanobis, KNN, ViM); without it those baselines are left out.
    fpr_images: clean images [M, C, H, W] on which the clean false-positive rate at the
    threshold is measured (default ``images``). gradsentry alone scores them: a rate near
    5% measured on N = 500 is ±1 point (one binomial standard deviation), too coarse
    for a calibration check, while the N challenge sets cost N attacks each.
    """
    model = sentry.extractor.model
    cache = cache or SetCache(None)
    fitted = []
    for name in baselines:
        b = create(name)
        if b.needs_fit:
            if baseline_fit is None:
                continue
            b.fit(model, *baseline_fit)
        fitted.append((name, b))
    seen_specs = {c["spec"] for c in sentry.bundle.manifest["fit_summary"].get("challenges", [])}

    def score_all(
        x: np.ndarray, what: str, with_baselines: bool = True
    ) -> tuple[dict[str, np.ndarray], np.ndarray, Verdict]:
        scores, preds, flagged, kinds = [], [], [], []
        chunks = batches(x, batch_size, model_device(model))
        total = -(-len(x) // batch_size)
        for chunk in tqdm(chunks, total=total, desc=what, disable=not progress, leave=False):
            out = sentry.check(chunk)
            scores.append(out.score)
            preds.append(out.predicted)
            flagged.append(out.flagged)
            kinds += out.kind
        result = {PRIMARY: np.concatenate(scores)}
        for name, b in fitted if with_baselines else ():
            result[name] = b.score(model, x, batch_size=batch_size)
        verdict = Verdict(np.concatenate(flagged), np.array(kinds, dtype=object))
        return result, np.concatenate(preds), verdict

    clean_scores, clean_pred, _ = score_all(images, "clean")
    clean = CleanScores(clean_scores, float((clean_pred == labels).mean()))
    # The operating point users get: how often clean inputs are flagged at the threshold.
    if fpr_images is None:
        flagged = clean_scores[PRIMARY] >= sentry.threshold
    else:
        flagged = score_all(fpr_images, "clean FPR", with_baselines=False)[2].flagged
    meta = {
        **dict(meta or {}),
        "threshold": sentry.threshold,
        "target_fpr": float(sentry.bundle.manifest["target_fpr"]),
        "clean_false_positive_rate": float(flagged.mean()),
        "clean FPR images": len(flagged),
    }
    results = []
    for i, s in enumerate(sets):
        made = cache.generate(s.challenge, model, images, labels, seed=seed + i, progress=progress)
        scores, pred, verdict = score_all(made, s.name)
        is_ood = s.challenge.kind == "ood"
        wrong = None if is_ood else pred != labels
        results.append(
            SetScores(
                name=s.name,
                family=s.challenge.kind,
                seen=s.challenge.spec in seen_specs,
                scores=scores,
                wrong=wrong,
                accuracy=None if is_ood else float(1 - wrong.mean()),
                flagged=verdict.flagged,
                kinds=verdict.kinds,
            )
        )
    return build_report(clean, results, primary=PRIMARY, meta=meta)
