"""ReliabilityDetector: H fitted with scikit-learn on precomputed features."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Self

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from detectors.detector import attribution
from detectors.detector.calibration import (
    MIN_EXPECTED_FALSE_POSITIVES,
    CalibrationWarning,
    calibrate_threshold,
)
from detectors.detector.classifiers import CLASSIFIERS, build_classifier
from detectors.detector.kinds import CHALLENGE_KINDS, CLEAN, check_kinds
from detectors.detector.scoring import ScoringMixin
from detectors.detector.strategies import STRATEGIES, get_strategy
from detectors.detector.transform import LogTransform
from detectors.detector.validation import check_features
from detectors.detector.weights import balanced_weights


class ReliabilityDetector(ScoringMixin, BaseEstimator):
    """H(·): flags rows of a feature matrix as challenging (adversarial / OOD / corrupted).

    Args:
        classifier: name in ``CLASSIFIERS`` ("logistic", "mlp", "gbm").
        strategy: name in ``STRATEGIES`` ("binary", "multiclass", "per_kind").
        target_fpr: share of clean inputs the calibrated threshold may flag, in (0, 1).
        calibration_fraction: share of the clean rows held out from the heads to set the
            threshold, in (0, 1).
        log_columns: boolean mask [F] of columns to log-transform (norms); None logs all.
        balance: weight rows so clean and challenge rows, and the kinds among the latter,
            count equally in every head (see ``weights.balanced_weights``).
        attribution: with two or more kinds, also fit the attribution head
            (``attribution.HEAD``, kind against kind on challenge rows) that names a flagged
            input's kind; its temperature is calibrated on held-out challenge rows
            (``calibration_fraction`` of each kind's rows), then it is refitted on all.
        random_state: seed for the calibration split and the classifiers.

    Fitted attributes: ``heads_`` ({head: Pipeline}), ``kinds_`` (fitted challenge kinds in
    canonical order), ``threshold_``, ``calibration_fpr_`` (FPR achieved on the held-out clean
    rows), ``calibration_rows_`` (int64 [n_calibration_], indices into fit's X of those rows,
    sorted), ``n_calibration_``, ``counts_`` ({kind: rows given to fit}), ``n_features_in_``,
    ``transform_``, ``strategy_``; with attribution also ``attribution_temperature_`` and
    ``attribution_accuracy_`` (accuracy on the held-out challenge rows, kinds weighted
    equally), and ``heads_[attribution.HEAD]``.
    """

    def __init__(
        self,
        classifier: str = "logistic",
        strategy: str = "per_kind",
        target_fpr: float = 0.05,
        calibration_fraction: float = 0.25,
        log_columns: np.ndarray | Sequence[bool] | None = None,
        balance: bool = True,
        attribution: bool = True,
        random_state: int = 0,
    ) -> None:
        self.classifier = classifier
        self.strategy = strategy
        self.target_fpr = target_fpr
        self.calibration_fraction = calibration_fraction
        self.log_columns = log_columns
        self.balance = balance
        self.attribution = attribution
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(
                f"unknown classifier {self.classifier!r}; available: {sorted(CLASSIFIERS)}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; available: {sorted(STRATEGIES)}")
        for name in ("target_fpr", "calibration_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if isinstance(self.random_state, bool) or not isinstance(
            self.random_state, numbers.Integral
        ):
            raise TypeError(f"random_state must be an integer, got {self.random_state!r}")
        for name in ("balance", "attribution"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def fit(
        self,
        X: np.ndarray,
        kinds: Sequence[str] | np.ndarray,
        attribution_X: np.ndarray | None = None,
        attribution_kinds: Sequence[str] | np.ndarray | None = None,
    ) -> Self:
        """Fit the heads and calibrate the threshold.

        Args:
            X: raw features float [N, F] (norms before the log transform), finite.
            kinds: str [N], each "clean", "adversarial", "ood" or "corrupted"; at least one
                clean row and one challenge row.
            attribution_X: more challenge rows, raw features float [M, F], that only the
                attribution head is trained on (more generators per kind teach it what a
                family is without changing what the detection heads were fitted on).
            attribution_kinds: str [M], each one of the challenge kinds present in ``kinds``.
        """
        self._check_params()
        X = check_features(X)
        row_kinds = check_kinds(kinds, len(X))
        if (attribution_X is None) != (attribution_kinds is None):
            raise ValueError("give attribution_X and attribution_kinds together")
        if attribution_X is None:
            extra_X, extra_kinds = np.empty((0, X.shape[1])), np.empty(0, dtype=str)
        else:
            extra_X = check_features(attribution_X, X.shape[1], "attribution_X")
            extra_kinds = check_kinds(attribution_kinds, len(extra_X))
        transform = LogTransform(self.log_columns)
        if transform.n_features not in (None, X.shape[1]):
            raise ValueError(
                f"log_columns has {transform.n_features} flags but X has {X.shape[1]} features"
            )
        _warn_negative_logged(X, transform)

        clean_rows = np.flatnonzero(row_kinds == CLEAN)
        if len(clean_rows) == 0:
            raise ValueError("kinds has no 'clean' rows; H needs clean rows to fit and calibrate")
        kinds_ = tuple(k for k in CHALLENGE_KINDS if k in set(row_kinds.tolist()))
        if not kinds_:
            raise ValueError(f"kinds has no challenge rows; give some of {list(CHALLENGE_KINDS)}")
        n_cal = math.ceil(self.calibration_fraction * len(clean_rows))
        if len(clean_rows) - n_cal < 1:
            raise ValueError(
                f"{len(clean_rows)} clean row(s) cannot be split into fitting and "
                f"calibration rows with calibration_fraction="
                f"{self.calibration_fraction}"
            )
        if n_cal * self.target_fpr < MIN_EXPECTED_FALSE_POSITIVES:
            warnings.warn(
                f"only {n_cal} held-out clean rows to calibrate target_fpr={self.target_fpr}; "
                f"the threshold is unreliable below "
                f"{math.ceil(MIN_EXPECTED_FALSE_POSITIVES / self.target_fpr)}",
                CalibrationWarning,
                stacklevel=2,
            )

        # Only clean rows are held out, so every fitted kind stays in every head's training set.
        rng = np.random.default_rng(int(self.random_state))
        calibration_rows = np.sort(rng.choice(clean_rows, size=n_cal, replace=False))
        calibration = np.zeros(len(X), dtype=bool)
        calibration[calibration_rows] = True
        Xt = transform.transform(X)
        strategy = get_strategy(self.strategy)
        fit_X, fit_kinds = Xt[~calibration], row_kinds[~calibration]
        heads: dict[str, Pipeline] = {}
        for head in strategy.head_names(kinds_):
            rows, y = strategy.targets(head, kinds_, fit_kinds)
            heads[head] = self._fit_head(fit_X[rows], y, fit_kinds[rows])
        unknown = sorted(set(extra_kinds.tolist()) - set(kinds_))
        if unknown:
            raise ValueError(
                f"attribution_kinds {unknown} are not challenge kinds of the detection rows "
                f"{list(kinds_)}"
            )
        self.n_attribution_extra_ = len(extra_X)
        if self.attribution and len(kinds_) > 1:
            heads[attribution.HEAD] = self._fit_attribution(
                np.concatenate([Xt, transform.transform(extra_X)]) if len(extra_X) else Xt,
                np.concatenate([row_kinds, extra_kinds]),
                kinds_,
                rng,
                len(X),
            )

        self.transform_ = transform
        self.strategy_ = strategy
        self.kinds_ = kinds_
        self.heads_ = heads
        self.n_features_in_ = X.shape[1]
        self.counts_ = {k: int(np.sum(row_kinds == k)) for k in (CLEAN, *kinds_)}
        self.n_calibration_ = n_cal
        self.calibration_rows_ = calibration_rows.astype(np.int64)
        cal_scores, _ = self._combine(Xt[calibration])
        self.threshold_, self.calibration_fpr_ = calibrate_threshold(cal_scores, self.target_fpr)
        return self

    def _fit_head(
        self,
        X: np.ndarray,
        y: np.ndarray,
        row_kinds: np.ndarray,
        boost: np.ndarray | None = None,
    ) -> Pipeline:
        """Fit one fresh pipeline on transformed rows X [M, F] with labels y int [M]
        (``boost`` float [M]: factors on the balanced weights)."""
        pipe = build_classifier(self.classifier, int(self.random_state))
        fit_params = {}
        if self.balance:
            # Only the classifier is weighted: the scaler is mere conditioning.
            weights = balanced_weights(row_kinds)
            fit_params[f"{pipe.steps[-1][0]}__sample_weight"] = (
                weights if boost is None else weights * boost
            )
        pipe.fit(X, y, **fit_params)
        # Strategies address probability columns by label, so labels must be exactly 0..C-1.
        if not np.array_equal(pipe.classes_, np.arange(len(pipe.classes_))):
            raise RuntimeError(f"head classes {pipe.classes_} are not 0..C-1")
        return pipe

    def _fit_attribution(
        self,
        Xt: np.ndarray,
        row_kinds: np.ndarray,
        kinds: tuple[str, ...],
        rng: np.random.Generator,
        n_detection: int,
    ) -> Pipeline:
        """Fit the kind-against-kind head on the challenge rows of Xt [N, F] (transformed);
        the first ``n_detection`` rows are the detection heads' rows, the rest
        attribution-only rows.

        A first fit leaves ``calibration_fraction`` of each kind's rows out; they set the
        temperature and measure the held-out accuracy. The head kept is refitted on all the
        challenge rows (the temperature carries over: same model class, more data).
        """
        rows, y = attribution.targets(kinds, row_kinds)
        X, sub_kinds = Xt[rows], row_kinds[rows]
        boost = attribution.detection_boost(sub_kinds, np.flatnonzero(rows) < n_detection)
        held = attribution.held_out_rows(y, self.calibration_fraction, rng)
        first = self._fit_head(X[~held], y[~held], sub_kinds[~held], boost[~held])
        probas = first.predict_proba(X[held])
        weights = balanced_weights(sub_kinds[held]) * boost[held]
        self.attribution_temperature_ = attribution.fit_temperature(probas, y[held], weights)
        hits = probas.argmax(axis=1) == y[held]
        self.attribution_accuracy_ = float(np.sum(weights * hits) / np.sum(weights))
        return self._fit_head(X, y, sub_kinds, boost)

    def _check_ready(self) -> None:
        check_is_fitted(self, "heads_")

    def _head_probas(self, Xt: np.ndarray) -> dict[str, np.ndarray]:
        return {head: pipe.predict_proba(Xt) for head, pipe in self.heads_.items()}


def _warn_negative_logged(X: np.ndarray, transform: LogTransform) -> None:
    """Warn when log-transformed columns hold negatives (signed statistics logged by mistake)."""
    mask = np.ones(X.shape[1], bool) if transform.log_columns is None else transform.log_columns
    negative = np.flatnonzero(mask & (X < 0).any(axis=0))
    if len(negative):
        warnings.warn(
            f"columns {negative.tolist()} contain negative values but are log-transformed "
            f"(clamped to log({transform.floor:g})); pass log_columns to keep signed "
            "statistics linear",
            UserWarning,
            stacklevel=3,
        )
