"""evaluate(): a Sentry and the baselines scored on clean digits and named challenge sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detectors.challenges import ChallengeContext, parse_spec
from detectors.evaluate.report import Report
from detectors.evaluate.run import BASELINES, PRIMARY, EvalSet, evaluate
from detectors.sentry import Sentry
from detectors.setcache import SetCache
from tests.library.conftest import TARGET_FPR

#: (name, spec as a user writes it, fitted on it?). Seen means the exact canonical spec,
#: not the kind: FGSM at another eps is an unseen set.
SETS = (
    ("fgsm", "fgsm", True),
    ("fgsm_weak", "fgsm:eps=0.1", False),
    ("noise", "corruption:type=gaussian_noise,severity=3", True),
    ("gaussian", "ood:source=gaussian", False),
    ("uniform", "ood:source=uniform", True),
)


@pytest.fixture(scope="module")
def sentry(digits_model: nn.Module, bundle_dir: Path) -> Sentry:
    return Sentry.load(digits_model, bundle_dir)


@pytest.fixture(scope="module")
def report(
    sentry: Sentry, test_split: tuple[np.ndarray, np.ndarray], digits: tuple[np.ndarray, np.ndarray]
) -> Report:
    images, labels = test_split
    return evaluate(
        sentry,
        images,
        labels,
        [EvalSet(name, parse_spec(spec)) for name, spec, _ in SETS],
        baseline_fit=(digits[0][300:600], digits[1][300:600]),
        progress=False,
        meta={"purpose": "test"},
    )


def test_report_has_every_set_in_order(
    report: Report, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    assert [s.name for s in report.sets] == [name for name, _, _ in SETS]
    assert report.clean_n == len(test_split[0])
    assert all(s.n == len(test_split[0]) for s in report.sets)
    families = {s.name: s.family for s in report.sets}
    assert families == {
        "fgsm": "adversarial",
        "fgsm_weak": "adversarial",
        "noise": "corrupted",
        "gaussian": "ood",
        "uniform": "ood",
    }
    assert report.meta["purpose"] == "test"  # the caller's meta is kept


def test_meta_records_the_operating_point(
    report: Report, sentry: Sentry, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    scores = sentry.check(torch.from_numpy(test_split[0])).score
    assert report.meta["threshold"] == pytest.approx(sentry.threshold)
    assert report.meta["target_fpr"] == pytest.approx(TARGET_FPR)
    assert report.meta["clean_false_positive_rate"] == pytest.approx(
        np.mean(scores >= sentry.threshold)
    )
    assert report.meta["clean FPR images"] == len(test_split[0])


def test_the_clean_fpr_is_measured_on_the_images_given_for_it(
    sentry: Sentry, test_split: tuple[np.ndarray, np.ndarray], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """fpr_images: the operating point on a larger clean sample than the AUROC negatives
    (here all of ``digits``), scored by gradsentry's own check."""
    images, labels = test_split
    more = digits[0]
    sets = [EvalSet("gaussian", parse_spec("ood:source=gaussian"))]
    got = evaluate(sentry, images[:20], labels[:20], sets, progress=False, fpr_images=more)
    flagged = sentry.check(torch.from_numpy(more)).flagged
    assert got.meta["clean FPR images"] == len(more) > 20
    assert got.meta["clean_false_positive_rate"] == pytest.approx(flagged.mean())
    assert got.clean_n == 20


def test_seen_exactly_for_the_fitted_specs(report: Report) -> None:
    assert {s.name: s.seen for s in report.sets} == {name: seen for name, _, seen in SETS}
    assert report.unseen is not None
    assert report.unseen.sets == tuple(name for name, _, seen in SETS if not seen)


def test_baselines_present_and_metrics_in_range(report: Report) -> None:
    assert report.primary == PRIMARY
    assert report.methods == (PRIMARY, *BASELINES)
    for s in report.sets:
        assert set(s.metrics) == set(report.methods)
        for method, m in s.metrics.items():
            values = m.to_dict()
            assert all(0.0 <= v <= 1.0 for v in values.values()), (s.name, method, values)


def test_accuracies_are_the_classifier_accuracies(
    report: Report, digits_model: nn.Module, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = test_split
    with torch.no_grad():
        predicted = digits_model(torch.from_numpy(images)).argmax(1).numpy()
    assert report.clean_accuracy == pytest.approx(np.mean(predicted == labels))
    by_name = {s.name: s for s in report.sets}
    assert by_name["gaussian"].accuracy is None and by_name["uniform"].accuracy is None
    # FGSM at eps 0.2 fools the digits model more often than at 0.1.
    assert by_name["fgsm"].accuracy < by_name["fgsm_weak"].accuracy < report.clean_accuracy


def test_gradsentry_detects_what_it_was_fitted_on(report: Report) -> None:
    for s in report.sets:
        if s.seen:
            assert s.metrics[PRIMARY].auroc > 0.9, s.name


def test_mahalanobis_is_left_out_without_fit_data(
    digits_model: nn.Module, bundle_dir: Path, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = test_split
    small = evaluate(
        Sentry.load(digits_model, bundle_dir),
        images[:30],
        labels[:30],
        [EvalSet("uniform", parse_spec("ood:source=uniform"))],
        baselines=("msp", "mahalanobis"),
        progress=False,
    )
    assert small.methods == (PRIMARY, "msp")
    assert small.sets[0].seen is True


def test_sets_come_from_the_cache_when_given(
    digits_model: nn.Module,
    bundle_dir: Path,
    test_split: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    images, labels = test_split[0][:30], test_split[1][:30]
    sentry = Sentry.load(digits_model, bundle_dir)
    sets = [EvalSet("gaussian", parse_spec("ood:source=gaussian"))]
    args = dict(baselines=("msp",), progress=False, seed=7)
    first = evaluate(sentry, images, labels, sets, cache=SetCache(tmp_path), **args)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = evaluate(sentry, images, labels, sets, cache=SetCache(tmp_path), **args)
    uncached = evaluate(sentry, images, labels, sets, **args)
    assert first.to_dict() == again.to_dict() == uncached.to_dict()


def test_kind_confusion_counts_the_sentrys_flagged_unseen_inputs(
    report: Report,
    digits_model: nn.Module,
    bundle_dir: Path,
    test_split: tuple[np.ndarray, np.ndarray],
) -> None:
    conf = report.kind_confusion
    assert conf is not None
    assert conf.sets == tuple(name for name, _, seen in SETS if not seen)
    # The Gaussian-noise OOD set is regenerated with its seed (1000 + its index) and
    # scored directly: the report counts exactly its flagged inputs, by attributed kind.
    index = [name for name, _, _ in SETS].index("gaussian")
    made = parse_spec("ood:source=gaussian").generate(
        ChallengeContext(*test_split, digits_model, seed=1000 + index)
    )
    verdicts = Sentry.load(digits_model, bundle_dir).check(torch.from_numpy(made))
    kinds = np.array(verdicts.kind, dtype=object)[verdicts.flagged]
    expected = {str(k): int((kinds == k).sum()) for k in set(kinds.tolist())}
    assert conf.counts["ood"] == expected
    assert sum(conf.counts["adversarial"].values()) > 0  # FGSM at 0.1 is flagged too
