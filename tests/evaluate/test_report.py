"""build_report / Report.write with synthetic scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from detectors.evaluate.metrics import detection_metrics
from detectors.evaluate.report import CleanScores, Report, SetScores, build_report

CLEAN = np.array([0.0, 1.0, 2.0, 3.0])


def _hand_made() -> tuple[CleanScores, list[SetScores]]:
    """Clean scores 0..3 for both methods; sets with known metrics.

    gradsentry: "above" AUROC 1, "below" AUROC 0, "ood_far" AUROC 1.
    msp: "above" and "below" AUROC 5/8, "ood_far" AUROC 7/12.
    """
    clean = CleanScores({"gradsentry": CLEAN, "msp": CLEAN}, accuracy=0.98)
    sets = [
        SetScores(
            name="above",
            family="adversarial",
            seen=True,
            scores={"gradsentry": np.array([4.0, 5.0]), "msp": np.array([1.5, 2.5])},
            wrong=np.array([True, True]),
            accuracy=0.5,  # harmful
        ),
        SetScores(
            name="below",
            family="adversarial",
            seen=False,
            scores={"gradsentry": np.array([-1.0, -2.0]), "msp": np.array([1.5, 2.5])},
            wrong=np.array([True, False]),  # one wrong input: restricted metrics n/a
            accuracy=0.95,  # not harmful
        ),
        SetScores(
            name="ood_far",
            family="ood",
            seen=False,
            scores={"gradsentry": np.array([9.0, 9.0, 9.0]), "msp": np.array([0.5, 1.5, 9.0])},
            wrong=None,
            accuracy=None,
        ),
    ]
    return clean, sets


@pytest.fixture
def report() -> Report:
    clean, sets = _hand_made()
    return build_report(clean, sets, meta={"model": "MnistCNN", "seed": 0, "kinds": ("a", "b")})


def test_family_means_by_hand(report: Report) -> None:
    adv = report.family_means["adversarial"]
    assert adv.sets == ("above", "below")
    g = adv.metrics["gradsentry"]
    assert g.auroc == pytest.approx(0.5)  # (1 + 0) / 2
    assert g.fpr_at_95_tpr == pytest.approx(0.5)  # (0 + 1) / 2
    assert g.detection_accuracy == pytest.approx(0.75)  # (1 + 0.5) / 2
    # "below": positives ranked 5th and 6th of 6 -> AP = (1/5 + 2/6) / 2.
    assert g.aupr == pytest.approx((1.0 + (1 / 5 + 2 / 6) / 2) / 2)
    # msp: both sets are {1.5, 2.5} vs 0..3: each wins 2 and 3 of 4 pairs -> 5/8.
    assert adv.metrics["msp"].auroc == pytest.approx(5 / 8)
    assert report.family_means["ood"].metrics["gradsentry"].auroc == 1.0
    assert set(report.family_means) == {"adversarial", "ood"}  # no corrupted sets given


def test_unseen_and_harmful_groups(report: Report) -> None:
    assert report.unseen is not None and report.unseen_harmful is not None
    assert report.unseen.sets == ("below", "ood_far")
    assert report.unseen_harmful.sets == ("ood_far",)  # "below" keeps 95% accuracy
    assert report.unseen.metrics["gradsentry"].auroc == pytest.approx(0.5)  # (0 + 1) / 2
    assert [r.harmful for r in report.sets] == [True, False, True]


def test_harmful_threshold_is_strict() -> None:
    clean = CleanScores({"gradsentry": CLEAN}, accuracy=1.0)
    sets = [
        SetScores(f"acc{a}", "corrupted", False, {"gradsentry": CLEAN + 1}, np.zeros(4, bool), a)
        for a in (0.9, 0.89)
    ]
    report = build_report(clean, sets)
    assert [r.harmful for r in report.sets] == [False, True]
    assert report.unseen_harmful is not None and report.unseen_harmful.sets == ("acc0.89",)
    stricter = build_report(clean, sets, harmful_accuracy=0.95)
    assert [r.harmful for r in stricter.sets] == [True, True]


def test_roc_curves_for_the_plot(report: Report) -> None:
    per_set = report.curves.per_set
    assert set(per_set) == {"above", "below", "ood_far"}
    assert per_set["below"].auroc == 0.0 and per_set["above"].auroc == 1.0
    pooled = report.curves.pooled["adversarial"]["gradsentry"]
    expected = detection_metrics(CLEAN, np.array([4.0, 5.0, -1.0, -2.0])).auroc
    assert pooled.auroc == pytest.approx(expected)
    assert pooled.fpr[0] == 0.0 and pooled.tpr[-1] == 1.0
    assert set(report.curves.pooled) == {"adversarial", "ood"}


def test_metrics_restricted_to_wrong_inputs(report: Report) -> None:
    above, below, ood = report.sets
    assert above.n_wrong == 2 and above.wrong_metrics is not None
    assert above.wrong_metrics["msp"] == detection_metrics(CLEAN, np.array([1.5, 2.5]))
    assert below.n_wrong == 1 and below.wrong_metrics is None  # fewer than 2
    assert ood.n_wrong is None and ood.wrong_metrics is None  # no true labels


def test_restricted_metrics_use_only_the_wrong_inputs() -> None:
    clean = CleanScores({"gradsentry": CLEAN}, accuracy=1.0)
    s = SetScores(
        name="mixed",
        family="corrupted",
        seen=True,
        scores={"gradsentry": np.array([-5.0, 10.0, 11.0, -6.0])},
        wrong=np.array([False, True, True, False]),
        accuracy=0.5,
    )
    r = build_report(clean, [s]).sets[0]
    assert r.metrics["gradsentry"].auroc == 0.5
    assert r.wrong_metrics is not None and r.wrong_metrics["gradsentry"].auroc == 1.0


def test_primary_comes_first_and_to_dict_has_no_scores(report: Report) -> None:
    clean, sets = _hand_made()
    other = build_report(clean, sets, primary="msp")
    assert other.methods == ("msp", "gradsentry")
    d = report.to_dict()
    assert d["methods"] == ["gradsentry", "msp"]
    assert d["meta"] == {"model": "MnistCNN", "seed": 0, "kinds": ["a", "b"]}
    assert d["sets"][2]["wrong_metrics"] is None and d["sets"][2]["accuracy"] is None
    assert d["family_means"]["adversarial"]["metrics"]["gradsentry"]["auroc"] == 0.5
    assert "scores" not in json.dumps(d)
    assert json.loads(json.dumps(d)) == d


def test_write_creates_all_files(report: Report, tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    files = report.write(out)
    assert files.markdown == out / "report.md" and files.json == out / "report.json"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "roc.png"]

    assert json.loads(files.json.read_text()) == report.to_dict()

    md = files.markdown.read_text()
    for name in ("above", "below", "ood_far", "## Adversarial", "## Out-of-distribution"):
        assert name in md
    assert "**model**: MnistCNN" in md
    assert "![ROC curves per family](roc.png)" in md
    # Summary rows: mean AUROC per method, the best in bold.
    assert re.search(r"\| Adversarial \| 2 \| 50\.0 \| \*\*62\.5\*\* \|", md)
    assert re.search(r"\| Out-of-distribution \| 1 \| \*\*100\.0\*\* \| ", md)
    assert re.search(r"\| Unseen harmful sets \| 1 \| \*\*100\.0\*\* \|", md)
    # Per-set row: name, seen, n, accuracy, primary metrics, baseline AUROC, wrong-only.
    assert "| below | unseen | 2 | 95.0 | 0.0 | " in md
    assert md.count("n/a (1)") == 1

    assert files.roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(files.roc)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600  # two panels
    assert image[..., :3].std() > 0.05  # something was drawn


def test_write_json_elsewhere_and_overwrite(report: Report, tmp_path: Path) -> None:
    json_path = tmp_path / "metrics" / "eval.json"
    report.write(tmp_path / "out", json_path=json_path)
    report.write(tmp_path / "out", json_path=json_path)  # overwriting is fine
    assert json.loads(json_path.read_text())["primary"] == "gradsentry"
    assert not (tmp_path / "out" / "report.json").exists()


def test_failed_write_leaves_no_partial_files(report: Report, tmp_path: Path) -> None:
    (tmp_path / "report.md").mkdir()  # the markdown cannot replace a directory
    with pytest.raises(OSError):
        report.write(tmp_path)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    # Files written before the failure are complete.
    assert json.loads((tmp_path / "report.json").read_text()) == report.to_dict()


def test_many_sets_and_all_families_render(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    methods = ["gradsentry", "msp", "energy"]
    clean = CleanScores({m: rng.normal(0, 1, 200) for m in methods}, accuracy=0.99)
    sets = []
    for i in range(30):  # more sets than the plot labels individually
        family = ("adversarial", "corrupted", "ood")[i % 3]
        labelled = family != "ood"
        sets.append(
            SetScores(
                name=f"{family}_{i}",
                family=family,
                seen=i % 2 == 0,
                scores={m: rng.normal(1, 1, 50) for m in methods},
                wrong=rng.uniform(size=50) < 0.3 if labelled else None,
                accuracy=0.7 if labelled else None,
            )
        )
    files = build_report(clean, sets, meta={"note": "a | b"}).write(tmp_path)
    md = files.markdown.read_text()
    assert "## Corrupted" in md and md.count("| corrupted_") == 10
    assert "a \\| b" in md  # pipes escaped so tables stay intact
    assert imread(files.roc).shape[1] > 900  # three panels


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda c, s: s.clear(), ValueError, "at least one challenge set"),
        (lambda c, s: s.append(s[0]), ValueError, "unique"),
        (lambda c, s: c.scores.pop("msp"), ValueError, "has scores for"),
        (lambda c, s: c.scores.pop("gradsentry"), ValueError, "primary method"),
    ],
)
def test_build_report_validation(mutate, error, message) -> None:  # type: ignore[no-untyped-def]
    clean, sets = _hand_made()
    mutate(clean, sets)
    with pytest.raises(error, match=message):
        build_report(clean, sets)


def test_meta_must_be_json() -> None:
    clean, sets = _hand_made()
    with pytest.raises(ValueError, match="JSON-serialisable"):
        build_report(clean, sets, meta={"array": np.zeros(2)})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        build_report(clean, sets, meta={"x": float("nan")})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "weird"}, "family must be one of"),
        ({"scores": {}}, "non-empty dict"),
        ({"scores": {"gradsentry": np.array([1.0, np.nan])}}, "NaN"),
        ({"scores": {"a": np.ones(2), "b": np.ones(3)}}, "differ in length"),
        ({"wrong": np.array([1, 0])}, "bool array"),
        ({"wrong": np.array([True])}, "bool array"),
        ({"accuracy": 1.5}, r"\[0, 1\]"),
        ({"accuracy": None}, "need both wrong and accuracy"),
        ({"family": "ood"}, "OOD sets have no true labels"),
    ],
)
def test_set_scores_validation(kwargs: dict, message: str) -> None:
    args = {
        "name": "s",
        "family": "corrupted",
        "seen": True,
        "scores": {"gradsentry": np.array([1.0, 2.0])},
        "wrong": np.array([True, False]),
        "accuracy": 0.5,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        SetScores(**args)


def test_clean_scores_validation() -> None:
    with pytest.raises(ValueError, match="clean accuracy"):
        CleanScores({"gradsentry": CLEAN}, accuracy=-0.1)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        CleanScores({"gradsentry": np.array([])}, accuracy=1.0)


def test_kind_confusion_counts_flagged_inputs_of_unseen_sets(tmp_path: Path) -> None:
    clean, sets = _hand_made()
    # "above" is seen: its kinds are left out. Of "below", only the flagged second input
    # counts (attributed "corrupted": wrong); of "ood_far", all three are flagged, two
    # attributed "ood" (right) and one "adversarial".
    sets[0].flagged, sets[0].kinds = np.array([True, True]), np.array(["ood", "ood"], object)
    sets[1].flagged = np.array([False, True])
    sets[1].kinds = np.array(["adversarial", "corrupted"], object)
    sets[2].flagged = np.array([True, True, True])
    sets[2].kinds = np.array(["ood", "adversarial", "ood"], object)
    report = build_report(clean, sets)
    conf = report.kind_confusion
    assert conf is not None and conf.sets == ("below", "ood_far")
    assert conf.counts == {"adversarial": {"corrupted": 1}, "ood": {"ood": 2, "adversarial": 1}}
    assert conf.n_flagged == 4 and conf.accuracy == pytest.approx(2 / 4)
    assert conf.family_accuracy("adversarial") == 0.0
    assert conf.family_accuracy("ood") == pytest.approx(2 / 3)
    doc = report.to_dict()["kind_confusion"]
    assert doc["accuracy"] == pytest.approx(0.5) and doc["n_flagged"] == 4
    markdown = report.write(tmp_path).markdown.read_text()
    assert "## Kind attribution on unseen sets" in markdown
    assert "| ood | 3 | 1 | 0 | 2 | 66.7 |" in markdown  # adversarial, corrupted, ood columns


def test_kind_confusion_is_absent_without_kinds_and_checks_shapes() -> None:
    clean, sets = _hand_made()
    assert build_report(clean, sets).kind_confusion is None
    with pytest.raises(ValueError, match="flagged and kinds together"):
        SetScores("x", "ood", False, {"gradsentry": CLEAN}, None, None, flagged=CLEAN > 1)
    with pytest.raises(ValueError, match="flagged must be a bool array"):
        SetScores("x", "ood", False, {"gradsentry": CLEAN}, None, None, CLEAN, CLEAN)
