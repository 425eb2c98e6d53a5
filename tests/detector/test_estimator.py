"""ReliabilityDetector: fitting and scoring for every classifier × strategy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from detectors.detector import ReliabilityDetector
from tests.detector.conftest import COMBOS, KINDS
from tests.detector.synthetic import LOG_COLUMNS, make_features

Data = tuple[np.ndarray, np.ndarray]


@pytest.mark.parametrize(("classifier", "strategy"), COMBOS)
def test_fit_predict_every_combination(
    fitted: dict[tuple[str, str], ReliabilityDetector],
    fresh_set: Data,
    classifier: str,
    strategy: str,
) -> None:
    det = fitted[classifier, strategy]
    X, kinds = fresh_set
    assert det.kinds_ == KINDS
    assert det.n_features_in_ == X.shape[1]
    assert det.n_calibration_ == 200 and det.counts_["clean"] == 800
    assert 0.0 <= det.threshold_ <= 1.0

    scores = det.scores(X)
    p = det.predict_proba(X)
    assert p.shape == (len(X),) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_array_equal(p, scores.probability)
    flagged = det.predict(X)
    assert flagged.dtype == bool
    np.testing.assert_array_equal(flagged, p >= det.threshold_)
    # Challenge rows score higher than clean ones (chance would be 0.5).
    assert roc_auc_score(kinds != "clean", p) > 0.7
    assert flagged[kinds != "clean"].mean() > 3 * flagged[kinds == "clean"].mean()

    # Kinds come from the attribution head, whatever the strategy: P(kind | challenging).
    per_kind = det.kind_scores(X)
    assert set(per_kind) == set(KINDS)
    stacked = np.stack([per_kind[k] for k in KINDS], axis=1)
    np.testing.assert_allclose(stacked.sum(axis=1), 1.0, rtol=1e-12)
    # The highest kind score names the right kind far more often than chance (1/3).
    challenge = kinds != "clean"
    predicted = np.array(KINDS)[stacked[challenge].argmax(axis=1)]
    assert (predicted == kinds[challenge]).mean() > 0.6
    assert 0.6 < det.attribution_accuracy_ <= 1.0 and det.attribution_temperature_ > 0


@pytest.mark.parametrize("strategy", ["binary", "multiclass", "per_kind"])
def test_without_attribution_kinds_come_from_the_strategy(
    train_set: Data, fresh_set: Data, strategy: str
) -> None:
    det = ReliabilityDetector(strategy=strategy, log_columns=LOG_COLUMNS, attribution=False)
    X = fresh_set[0]
    per_kind = det.fit(*train_set).kind_scores(X)
    assert "kind" not in det.heads_
    p = det.predict_proba(X)
    if strategy == "binary":
        assert per_kind == {}
    elif strategy == "per_kind":
        np.testing.assert_array_equal(p, stacked_all(per_kind))
    else:
        assert np.all(stacked_all(per_kind) <= p + 1e-12)  # P(kind) ≤ 1 − P(clean)


def test_attribution_beats_the_detection_heads_at_naming_kinds(
    fitted: dict[tuple[str, str], ReliabilityDetector], train_set: Data, fresh_set: Data
) -> None:
    # Kind against kind is what attribution is trained for; the per-kind heads only
    # ever saw clean against one kind.
    X, kinds = fresh_set
    challenge = kinds != "clean"
    attributed = fitted["logistic", "per_kind"]
    heads_only = clone(attributed).set_params(attribution=False).fit(*train_set)

    def accuracy(det: ReliabilityDetector) -> float:
        per_kind = det.kind_scores(X[challenge])
        stacked = np.stack([per_kind[k] for k in KINDS], axis=1)
        return float((np.array(KINDS)[stacked.argmax(axis=1)] == kinds[challenge]).mean())

    assert accuracy(attributed) > accuracy(heads_only)


def stacked_all(per_kind: dict[str, np.ndarray]) -> np.ndarray:
    return np.max(np.stack(list(per_kind.values())), axis=0)


def test_heads_follow_the_strategy(fitted: dict[tuple[str, str], ReliabilityDetector]) -> None:
    assert list(fitted["logistic", "binary"].heads_) == ["challenge", "kind"]
    assert list(fitted["logistic", "multiclass"].heads_) == ["multiclass", "kind"]
    assert list(fitted["logistic", "per_kind"].heads_) == [*KINDS, "kind"]
    assert list(fitted["logistic", "binary"].heads_["kind"].classes_) == [0, 1, 2]
    assert list(fitted["logistic", "multiclass"].heads_["multiclass"].classes_) == [0, 1, 2, 3]


def test_kinds_are_those_seen_at_fit_in_canonical_order(train_set: Data) -> None:
    X, kinds = train_set
    # Corrupted rows first, and no OOD rows at all.
    order = np.concatenate(
        [np.flatnonzero(kinds == k) for k in ("corrupted", "clean", "adversarial")]
    )
    det = ReliabilityDetector(log_columns=LOG_COLUMNS).fit(X[order], list(kinds[order]))
    assert det.kinds_ == ("adversarial", "corrupted")
    assert set(det.kind_scores(X[:5])) == {"adversarial", "corrupted"}
    assert "ood" not in det.counts_


def test_fit_is_deterministic_per_seed(train_set: Data, fresh_set: Data) -> None:
    X, kinds = train_set
    base = ReliabilityDetector("mlp", "binary", log_columns=LOG_COLUMNS)
    a = clone(base).fit(X, kinds)
    b = clone(base).fit(X, kinds)
    c = clone(base).set_params(random_state=1).fit(X, kinds)
    np.testing.assert_array_equal(a.predict_proba(fresh_set[0]), b.predict_proba(fresh_set[0]))
    assert a.threshold_ == b.threshold_
    assert a.threshold_ != c.threshold_  # another calibration split and another network


def test_balancing_makes_heads_insensitive_to_challenge_set_size(
    train_set: Data, fresh_set: Data
) -> None:
    X, kinds = train_set
    challenge = kinds != "clean"
    X5 = np.concatenate([X] + [X[challenge]] * 4)  # every challenge row five times
    kinds5 = np.concatenate([kinds] + [kinds[challenge]] * 4)
    Xt = fresh_set[0]

    def gap(balance: bool) -> float:
        det = ReliabilityDetector("logistic", "binary", log_columns=LOG_COLUMNS, balance=balance)
        p1 = det.fit(X, kinds).predict_proba(Xt)
        p5 = clone(det).fit(X5, kinds5).predict_proba(Xt)
        return float(np.abs(p1 - p5).max())

    assert gap(balance=True) < 0.02
    assert gap(balance=False) > 0.1  # the same experiment does detect a size effect


def test_get_params_round_trip() -> None:
    det = ReliabilityDetector("gbm", "multiclass", target_fpr=0.01, random_state=3)
    params = det.get_params()
    assert params["classifier"] == "gbm" and params["target_fpr"] == 0.01
    assert clone(det).get_params() == params


def test_signed_columns_logged_by_mistake_warn(train_set: Data) -> None:
    X, kinds = train_set  # the energy column (9) is negative
    with pytest.warns(UserWarning, match=r"columns \[9\] contain negative values"):
        ReliabilityDetector().fit(X, kinds)


def test_small_calibration_set_warns() -> None:
    from detectors.detector import CalibrationWarning

    rng = np.random.default_rng(0)
    X, kinds = make_features(rng, {"clean": 60, "ood": 60})
    with pytest.warns(CalibrationWarning, match="only 15 held-out clean rows"):
        ReliabilityDetector(log_columns=LOG_COLUMNS).fit(X, kinds)


def test_attribution_only_rows_train_the_kind_head_alone(train_set: Data, fresh_set: Data) -> None:
    # Extra rows of a kind the detection rows barely show: the detection heads (and so
    # the scores and the threshold) must not move; the kind head must learn from them.
    X, kinds = train_set
    keep = (kinds != "ood") | (np.cumsum(kinds == "ood") <= 20)  # 20 OOD detection rows
    extra_X, extra_kinds = make_features(np.random.default_rng(7), {"ood": 600})
    plain = ReliabilityDetector(log_columns=LOG_COLUMNS).fit(X[keep], kinds[keep])
    more = ReliabilityDetector(log_columns=LOG_COLUMNS).fit(
        X[keep], kinds[keep], extra_X, extra_kinds
    )
    test_X, test_kinds = fresh_set
    np.testing.assert_array_equal(more.predict_proba(test_X), plain.predict_proba(test_X))
    assert more.threshold_ == plain.threshold_ and more.n_attribution_extra_ == 600

    def ood_named(det: ReliabilityDetector) -> float:
        scores = det.kind_scores(test_X[test_kinds == "ood"])
        stacked = np.stack([scores[k] for k in KINDS], axis=1)
        return float((np.array(KINDS)[stacked.argmax(axis=1)] == "ood").mean())

    assert ood_named(more) > ood_named(plain)


def test_attribution_rows_must_be_fitted_kinds(train_set: Data) -> None:
    X, kinds = train_set
    keep = kinds != "ood"
    extra_X, extra_kinds = make_features(np.random.default_rng(7), {"ood": 5})
    det = ReliabilityDetector(log_columns=LOG_COLUMNS)
    with pytest.raises(ValueError, match=r"attribution_kinds \['ood'\]"):
        det.fit(X[keep], kinds[keep], extra_X, extra_kinds)
    with pytest.raises(ValueError, match="together"):
        det.fit(X, kinds, extra_X)


def test_detection_boost_gives_fitted_and_extra_rows_half_a_kind_each() -> None:
    from detectors.detector.attribution import detection_boost

    kinds = np.array(["ood"] * 2 + ["corrupted"] * 5 + ["adversarial"] * 3)
    detection = np.array([True, True, True, False, False, False, False, True, True, True])
    boost = detection_boost(kinds, detection)
    # corrupted: 1 fitted row and 4 extra rows -> 2.5 and 0.625 (each group sums to 2.5)
    np.testing.assert_allclose(boost, [1, 1, 2.5, 0.625, 0.625, 0.625, 0.625, 1, 1, 1])
