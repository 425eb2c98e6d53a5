"""Evaluation report: per-set detection metrics for gradsentry and the baselines.

Inputs are scores that were already computed (higher = more likely challenging) for
the clean test inputs and for each challenge set. ``build_report`` turns them into
metrics; ``Report.write`` renders ``report.md``, ``roc.png`` and a JSON document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
from sklearn.metrics import auc, roc_curve

from detectors.evaluate.atomic import write_atomic
from detectors.evaluate.markdown import render_markdown
from detectors.evaluate.metrics import DetectionMetrics, detection_metrics, labelled_scores
from detectors.evaluate.plots import render_roc_png

Family = Literal["adversarial", "corrupted", "ood"]
#: Families in the order reports list them.
FAMILIES: tuple[Family, ...] = get_args(Family)
#: A non-OOD set is "harmful" when the classifier's accuracy on it is below this.
HARMFUL_ACCURACY = 0.90
#: Metrics restricted to misclassified inputs need at least this many of them.
MIN_WRONG = 2
#: Version of the JSON document written by ``Report.write``.
FORMAT_VERSION = 1


def _score_array(values: Any, what: str) -> np.ndarray:
    """float64 [n], n >= 1, finite."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite scores")
    return arr


def _accuracy(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what} must lie in [0, 1], got {value!r}")
    return float(value)


def _score_dict(scores: Any, what: str) -> dict[str, np.ndarray]:
    """Validate ``{method: scores [n]}``: non-empty, string keys, one common length."""
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"{what}.scores must be a non-empty dict of method name -> scores")
    out = {}
    for method, values in scores.items():
        if not isinstance(method, str) or not method:
            raise ValueError(f"{what}.scores keys must be non-empty strings, got {method!r}")
        out[method] = _score_array(values, f"{what}.scores[{method!r}]")
    lengths = {m: len(v) for m, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{what}.scores arrays differ in length: {lengths}")
    return out


@dataclass
class SetScores:
    """Scores of every method on one challenge set.

    Attributes:
        name: unique set name, e.g. "pgd_eps0.1" or "gaussian_noise_s3".
        family: "adversarial", "corrupted" or "ood".
        seen: whether the detector saw this kind of challenge when it was fitted.
        scores: method name -> float [n], higher = more likely challenging.
        wrong: bool [n], True where the classifier's prediction is wrong; None for OOD.
        accuracy: classifier accuracy on the set in [0, 1]; None for OOD.
        flagged: bool [n], the primary method's verdict at its threshold (optional).
        kinds: str [n], the kind the primary method attributes to each input (optional;
            given with ``flagged``).
    """

    name: str
    family: Family
    seen: bool
    scores: dict[str, np.ndarray]
    wrong: np.ndarray | None
    accuracy: float | None
    flagged: np.ndarray | None = None
    kinds: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"set name must be a non-empty string, got {self.name!r}")
        what = f"set {self.name!r}"
        if self.family not in FAMILIES:
            raise ValueError(f"{what}: family must be one of {FAMILIES}, got {self.family!r}")
        if not isinstance(self.seen, bool | np.bool_):
            raise ValueError(f"{what}: seen must be a bool, got {self.seen!r}")
        self.seen = bool(self.seen)
        self.scores = _score_dict(self.scores, what)
        if (self.flagged is None) != (self.kinds is None):
            raise ValueError(f"{what}: give flagged and kinds together, or neither")
        if self.flagged is not None:
            flagged, kinds = np.asarray(self.flagged), np.asarray(self.kinds, dtype=object)
            if flagged.dtype != np.bool_ or flagged.shape != (self.n,):
                raise ValueError(f"{what}: flagged must be a bool array of shape ({self.n},)")
            if kinds.shape != (self.n,):
                raise ValueError(f"{what}: kinds must have shape ({self.n},)")
            self.flagged, self.kinds = flagged, kinds
        if self.family == "ood":
            if self.wrong is not None or self.accuracy is not None:
                raise ValueError(
                    f"{what}: OOD sets have no true labels; pass wrong=None and accuracy=None"
                )
            return
        if self.wrong is None or self.accuracy is None:
            raise ValueError(f"{what}: {self.family} sets need both wrong and accuracy")
        wrong = np.asarray(self.wrong)
        if wrong.dtype != np.bool_ or wrong.shape != (self.n,):
            raise ValueError(
                f"{what}: wrong must be a bool array of shape ({self.n},), "
                f"got {wrong.dtype} {wrong.shape}"
            )
        self.wrong = wrong
        self.accuracy = _accuracy(self.accuracy, f"{what}: accuracy")

    @property
    def n(self) -> int:
        """Number of inputs in the set."""
        return len(next(iter(self.scores.values())))


@dataclass
class CleanScores:
    """Scores of every method on the clean in-distribution test inputs.

    Attributes:
        scores: method name -> float [n0].
        accuracy: classifier accuracy on these inputs in [0, 1].
    """

    scores: dict[str, np.ndarray]
    accuracy: float

    def __post_init__(self) -> None:
        self.scores = _score_dict(self.scores, "clean")
        self.accuracy = _accuracy(self.accuracy, "clean accuracy")

    @property
    def n(self) -> int:
        """Number of clean inputs."""
        return len(next(iter(self.scores.values())))


def _metrics_dict(metrics: dict[str, DetectionMetrics] | None) -> dict[str, Any] | None:
    return None if metrics is None else {m: v.to_dict() for m, v in metrics.items()}


@dataclass(frozen=True)
class SetResult:
    """Metrics of every method on one challenge set (vs all clean inputs).

    ``wrong_metrics`` compares only the set's misclassified inputs with all clean
    inputs; it is None for OOD sets and when fewer than ``MIN_WRONG`` are wrong.
    """

    name: str
    family: Family
    seen: bool
    n: int
    accuracy: float | None
    harmful: bool
    metrics: dict[str, DetectionMetrics]
    n_wrong: int | None
    wrong_metrics: dict[str, DetectionMetrics] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["metrics"] = _metrics_dict(self.metrics)
        out["wrong_metrics"] = _metrics_dict(self.wrong_metrics)
        return out


@dataclass(frozen=True)
class GroupMean:
    """Per-method metrics averaged (field by field, sets weighted equally) over ``sets``."""

    sets: tuple[str, ...]
    metrics: dict[str, DetectionMetrics]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"sets": list(self.sets), "metrics": _metrics_dict(self.metrics)}


@dataclass(frozen=True)
class KindConfusion:
    """Attributed kind against true family, over the flagged inputs of the unseen sets.

    Attributes:
        counts: true family -> attributed kind -> number of flagged inputs (every family
            with flagged inputs; attributed kinds as the detector names them, "none" when
            it names none).
        sets: the unseen sets counted.
    """

    counts: dict[str, dict[str, int]]
    sets: tuple[str, ...]

    @property
    def n_flagged(self) -> int:
        """Flagged inputs counted."""
        return sum(sum(row.values()) for row in self.counts.values())

    @property
    def accuracy(self) -> float | None:
        """Share of the flagged inputs attributed to their true family (None if none)."""
        n = self.n_flagged
        hits = sum(row.get(family, 0) for family, row in self.counts.items())
        return None if n == 0 else hits / n

    def family_accuracy(self, family: str) -> float | None:
        """Share of ``family``'s flagged inputs attributed to it (None if none flagged)."""
        row = self.counts.get(family, {})
        n = sum(row.values())
        return None if n == 0 else row.get(family, 0) / n

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "sets": list(self.sets),
            "counts": self.counts,
            "n_flagged": self.n_flagged,
            "accuracy": self.accuracy,
            "family_accuracy": {f: self.family_accuracy(f) for f in self.counts},
        }


def _kind_confusion(sets: list[SetScores]) -> KindConfusion | None:
    """The confusion over unseen sets that carry attributed kinds (None if there are none)."""
    counted = [s for s in sets if not s.seen and s.kinds is not None]
    if not counted:
        return None
    counts: dict[str, dict[str, int]] = {}
    for s in counted:
        row = counts.setdefault(s.family, {})
        for kind in s.kinds[s.flagged]:
            key = "none" if kind is None else str(kind)
            row[key] = row.get(key, 0) + 1
    return KindConfusion(counts=counts, sets=tuple(s.name for s in counted))


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve: fpr, tpr float64 [m] (increasing), and its AUROC."""

    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float


@dataclass(frozen=True)
class ReportCurves:
    """ROC curves for the plot (not part of the JSON).

    Attributes:
        per_set: set name -> the primary method's ROC on that set.
        pooled: family -> method -> ROC of clean vs all of the family's sets pooled.
    """

    per_set: dict[str, RocCurve]
    pooled: dict[Family, dict[str, RocCurve]]


class ReportFiles(NamedTuple):
    """Paths written by ``Report.write``."""

    markdown: Path
    roc: Path
    json: Path


@dataclass(frozen=True)
class Report:
    """The evaluation of one detector against baselines; build it with ``build_report``.

    Attributes:
        primary: the method under evaluation (listed first everywhere).
        methods: all methods, primary first.
        meta: free-form JSON-serialisable context (model, data, detector, versions).
        clean_n, clean_accuracy: size of the clean test set and accuracy on it.
        sets: one result per challenge set, in input order.
        family_means: family -> mean over that family's sets.
        unseen: mean over sets not seen at fit time (None if there are none).
        unseen_harmful: mean over unseen sets that are OOD or drop accuracy below
            ``harmful_accuracy`` (None if there are none).
        harmful_accuracy: the accuracy threshold used for "harmful".
        kind_confusion: attributed kind vs true family on unseen sets' flagged inputs
            (None when no set carries attributed kinds).
        curves: ROC curves for the plot.
    """

    primary: str
    methods: tuple[str, ...]
    meta: dict[str, Any]
    clean_n: int
    clean_accuracy: float
    sets: tuple[SetResult, ...]
    family_means: dict[Family, GroupMean]
    unseen: GroupMean | None
    unseen_harmful: GroupMean | None
    harmful_accuracy: float = HARMFUL_ACCURACY
    kind_confusion: KindConfusion | None = None
    curves: ReportCurves = field(default_factory=lambda: ReportCurves({}, {}), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable form (metrics only; scores and curves are left out)."""
        return {
            "format_version": FORMAT_VERSION,
            "primary": self.primary,
            "methods": list(self.methods),
            "meta": self.meta,
            "clean": {"n": self.clean_n, "accuracy": self.clean_accuracy},
            "harmful_accuracy": self.harmful_accuracy,
            "min_wrong": MIN_WRONG,
            "sets": [s.to_dict() for s in self.sets],
            "family_means": {f: g.to_dict() for f, g in self.family_means.items()},
            "unseen": None if self.unseen is None else self.unseen.to_dict(),
            "unseen_harmful": None
            if self.unseen_harmful is None
            else self.unseen_harmful.to_dict(),
            "kind_confusion": None
            if self.kind_confusion is None
            else self.kind_confusion.to_dict(),
        }

    def to_json(self) -> str:
        """``to_dict()`` as strict JSON (no NaN), indented."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def write(self, out_dir: Path, json_path: Path | None = None) -> ReportFiles:
        """Write ``out_dir/report.md``, ``out_dir/roc.png`` and the JSON document.

        Everything is rendered in memory first and each file is replaced atomically, so
        a failure never leaves a half-written file.

        Args:
            out_dir: directory for the markdown and the plot (created if missing).
            json_path: where to write the JSON; default ``out_dir/report.json``.
        """
        out_dir = Path(out_dir)
        files = ReportFiles(
            markdown=out_dir / "report.md",
            roc=out_dir / "roc.png",
            json=Path(json_path) if json_path is not None else out_dir / "report.json",
        )
        payloads = {
            files.roc: render_roc_png(self),
            files.json: self.to_json().encode(),
            files.markdown: render_markdown(self, roc_image=files.roc.name).encode(),
        }
        for path, data in payloads.items():
            write_atomic(path, data)
        return files


def _mean_metrics(results: list[dict[str, DetectionMetrics]]) -> dict[str, DetectionMetrics]:
    """Field-wise mean of per-method metrics over several sets (equal weights)."""
    names = [f.name for f in fields(DetectionMetrics)]
    return {
        method: DetectionMetrics(
            **{k: float(np.mean([getattr(r[method], k) for r in results])) for k in names}
        )
        for method in results[0]
    }


def _group(results: list[SetResult]) -> GroupMean | None:
    if not results:
        return None
    return GroupMean(
        sets=tuple(r.name for r in results), metrics=_mean_metrics([r.metrics for r in results])
    )


def _roc(clean: np.ndarray, challenge: np.ndarray) -> RocCurve:
    y_true, y_score = labelled_scores(clean, challenge)
    fpr, tpr, _ = roc_curve(y_true, y_score)
    return RocCurve(fpr=fpr, tpr=tpr, auroc=float(auc(fpr, tpr)))


def _check_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """A detached, JSON-normalised copy of ``meta``."""
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise ValueError("meta must be a dict with string keys")
    try:
        return json.loads(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from exc


def build_report(
    clean: CleanScores,
    sets: list[SetScores],
    *,
    primary: str = "gradsentry",
    meta: dict[str, Any] | None = None,
    harmful_accuracy: float = HARMFUL_ACCURACY,
) -> Report:
    """Compute every metric of the report.

    Args:
        clean: scores on clean test inputs, one array [n0] per method.
        sets: challenge sets; each must have scores for exactly the methods in ``clean``.
        primary: the method under evaluation; the others are baselines.
        meta: JSON-serialisable context shown in the report header.
        harmful_accuracy: non-OOD sets with accuracy below this count as harmful.

    Raises:
        ValueError: no sets, duplicate set names, method names that differ between
            inputs, an unknown ``primary``, or ``meta`` that is not JSON-serialisable.
    """
    if not isinstance(clean, CleanScores):
        raise TypeError(f"clean must be CleanScores, got {type(clean).__name__}")
    if not sets:
        raise ValueError("need at least one challenge set")
    if not all(isinstance(s, SetScores) for s in sets):
        raise TypeError("sets must be a list of SetScores")
    names = [s.name for s in sets]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"set names must be unique; repeated: {dupes}")
    if primary not in clean.scores:
        raise ValueError(
            f"primary method {primary!r} has no clean scores; got {list(clean.scores)}"
        )
    for s in sets:
        if set(s.scores) != set(clean.scores):
            raise ValueError(
                f"set {s.name!r} has scores for {sorted(s.scores)}, "
                f"but the clean inputs for {sorted(clean.scores)}"
            )
    threshold = _accuracy(harmful_accuracy, "harmful_accuracy")
    methods = (primary, *(m for m in clean.scores if m != primary))

    results = [_set_result(clean, s, methods, threshold) for s in sets]
    by_family = {f: [r for r in results if r.family == f] for f in FAMILIES}
    unseen = [r for r in results if not r.seen]
    curves = ReportCurves(
        per_set={s.name: _roc(clean.scores[primary], s.scores[primary]) for s in sets},
        pooled={
            f: {
                m: _roc(
                    clean.scores[m],
                    np.concatenate([s.scores[m] for s in sets if s.family == f]),
                )
                for m in methods
            }
            for f in FAMILIES
            if by_family[f]
        },
    )
    return Report(
        primary=primary,
        methods=methods,
        meta=_check_meta(meta),
        clean_n=clean.n,
        clean_accuracy=clean.accuracy,
        sets=tuple(results),
        family_means={f: g for f in FAMILIES if (g := _group(by_family[f])) is not None},
        unseen=_group(unseen),
        unseen_harmful=_group([r for r in unseen if r.harmful]),
        harmful_accuracy=threshold,
        kind_confusion=_kind_confusion(sets),
        curves=curves,
    )


def _set_result(
    clean: CleanScores, s: SetScores, methods: tuple[str, ...], harmful_accuracy: float
) -> SetResult:
    metrics = {m: detection_metrics(clean.scores[m], s.scores[m]) for m in methods}
    n_wrong = None if s.wrong is None else int(np.sum(s.wrong))
    wrong_metrics = None
    if s.wrong is not None and n_wrong is not None and n_wrong >= MIN_WRONG:
        wrong_metrics = {
            m: detection_metrics(clean.scores[m], s.scores[m][s.wrong]) for m in methods
        }
    harmful = s.family == "ood" or (s.accuracy is not None and s.accuracy < harmful_accuracy)
    return SetResult(
        name=s.name,
        family=s.family,
        seen=s.seen,
        n=s.n,
        accuracy=s.accuracy,
        harmful=harmful,
        metrics=metrics,
        n_wrong=n_wrong,
        wrong_metrics=wrong_metrics,
    )
