"""Every registered demo data set: its sets, its committed model and bundle, its data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.challenges import parse_spec
from detectors.challenges.corruption import COMMON
from detectors.demo.datasets import datasets
from detectors.demo.fashion_train import load_fashion
from detectors.sentry import Sentry
from tests.cli.conftest import run_cli

NAMES = sorted(datasets())


def _generator(spec: str) -> tuple[str, str]:
    """What makes a set a different generator: the attack, corruption type or OOD source."""
    c = parse_spec(spec)
    key = {"corruption": "type", "ood": "source"}.get(c.name)
    return (c.name, str(c.params[key]) if key else "")


def test_registry_has_both_demos() -> None:
    assert {"mnist", "fashion"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_attribution_generators_are_none_of_the_reports(name: str) -> None:
    # The attribution head learns families from these; the report's unseen sets must stay
    # unseen to it: no attack, corruption type or OOD source in common.
    entry = datasets()[name]
    report = {_generator(spec) for _, spec in entry.report_sets()}
    extra = {_generator(spec) for spec in entry.attribution_challenges}
    assert not extra & report, extra & report
    assert {parse_spec(s).kind for s in entry.attribution_challenges} == {
        "adversarial",
        "corrupted",
        "ood",
    }
    corruptions = [p for n, p in report if n == "corruption"]
    assert sorted(set(corruptions)) == sorted(COMMON)
    # every fit challenge is also a report set (the "seen" ones)
    assert set(entry.fit_challenges) <= {spec for _, spec in entry.report_sets()}


@pytest.mark.parametrize("name", NAMES)
def test_committed_bundle_matches_its_entry(name: str) -> None:
    entry = datasets()[name]
    sentry = Sentry.load(entry.load_model(), entry.artifacts / "bundle")
    summary = sentry.bundle.manifest["fit_summary"]
    assert [c["spec"] for c in summary["challenges"]] == list(entry.fit_challenges)
    assert [c["spec"] for c in summary["attribution_challenges"]] == [
        parse_spec(s).spec for s in entry.attribution_challenges
    ]
    with np.load(entry.artifacts / "samples.npz", allow_pickle=False) as d:
        images = d["images"].astype(np.float32)[:, None] / 255.0
        labels = d["labels"].astype(np.int64)
    import torch

    out = sentry.check(torch.from_numpy(images))
    assert (out.predicted == labels).mean() >= 0.85  # 64 test images; 92%+ on all 10,000
    assert out.flagged.mean() <= 0.15  # 5% target FPR on 64 images, with slack


def test_fashion_loader_reads_the_installed_data() -> None:
    splits = load_fashion()
    sizes = {k: len(v.images) for k, v in splits.items()}
    assert sizes == {"classifier": 55_000, "detector": 2_000, "test": 10_000}
    test = splits["test"]
    assert test.images.shape[1:] == (1, 28, 28) and test.images.dtype == np.float32
    assert 0.0 <= test.images.min() and test.images.max() <= 1.0
    assert np.bincount(test.labels).tolist() == [1000] * 10  # the test set is balanced


def test_fashion_data_missing_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz"):
        load_fashion(tmp_path)
    run = run_cli("demo", "report", "--dataset", "fashion", "--data", tmp_path)
    assert run.code == 2
    assert "Fashion-MNIST data at" in run.err and len(run.err.strip().splitlines()) == 1
