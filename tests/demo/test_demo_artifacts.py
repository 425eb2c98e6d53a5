"""The committed demo: model and bundle belong together and behave as documented."""

from __future__ import annotations

import numpy as np
import torch

from detectors.demo import ARTIFACTS, load_demo_model
from detectors.sentry import Sentry


def _samples() -> tuple[np.ndarray, np.ndarray]:
    with np.load(ARTIFACTS / "samples.npz", allow_pickle=False) as d:
        return d["images"].astype(np.float32)[:, None] / 255.0, d["labels"].astype(np.int64)


def test_committed_bundle_loads_for_committed_model() -> None:
    sentry = Sentry.load(load_demo_model(), ARTIFACTS / "bundle")
    manifest = sentry.bundle.manifest
    assert manifest["target_fpr"] == 0.05
    assert [c["spec"] for c in manifest["fit_summary"]["challenges"]] == [
        "fgsm:eps=0.2",
        "corruption:type=gaussian_noise,severity=3",
        "ood:source=uniform",
    ]


def test_demo_trusts_clean_digits_and_flags_noise() -> None:
    images, labels = _samples()
    sentry = Sentry.load(load_demo_model(), ARTIFACTS / "bundle")
    clean = sentry.check(torch.from_numpy(images))
    assert (clean.predicted == labels).mean() >= 0.95
    assert clean.flagged.mean() <= 0.15  # 5% target FPR on 64 digits, with slack
    noise = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    flagged = sentry.check(noise)
    assert flagged.flagged.all()
    assert set(flagged.kind) == {"ood"}  # uniform noise is the demo's fitted OOD kind


def test_demo_names_the_kinds_it_was_fitted_on() -> None:
    # What `gradsentry check --demo` shows: each fit challenge, made from the sample digits,
    # is flagged and attributed to its own kind (the attribution head, not the detection
    # heads: those named nearly every flagged input "corrupted").
    from detectors.challenges import ChallengeContext, parse_spec
    from detectors.demo.sets import FIT_CHALLENGES

    images, labels = _samples()
    model = load_demo_model()
    sentry = Sentry.load(model, ARTIFACTS / "bundle")
    for spec in FIT_CHALLENGES:
        challenge = parse_spec(spec)
        made = challenge.generate(ChallengeContext(images, labels, model, seed=0))
        verdicts = sentry.check(torch.from_numpy(made))
        kinds = np.array(verdicts.kind, dtype=object)[verdicts.flagged]
        assert verdicts.flagged.mean() >= 0.9, spec
        # Measured on these 64 digits: FGSM 95%, Gaussian noise 94%, uniform noise 100%
        # named right (bundle with views and tone generators; 95/88/100% before). The
        # attribution head also learns from attribution-only generators (blur, spatter,
        # speckle, tones, MIM, shapes, smooth noise), which buys the unseen sets' families
        # (docs/results.md, "Kind attribution"). 80% leaves room for 5 more misses in 64.
        assert (kinds == challenge.kind).mean() >= 0.8, (spec, kinds.tolist())


def test_committed_demo_report_meets_every_bar() -> None:
    import json
    from pathlib import Path

    from detectors.demo.bars import check_bars

    root = Path(__file__).resolve().parents[2]
    report = json.loads((root / "docs/demo/report.json").read_text(encoding="utf-8"))
    bars = check_bars(report)
    # five AUROC bars, three family margins, kind attribution, the clean FPR
    assert len(bars) == 10
    kind = next(b for b in bars if b.name.startswith("kind:"))
    assert kind.value == report["kind_confusion"]["accuracy"]
    # The kind bar is shown in docs/demo/bars.md but not met yet (docs/results.md: "Kind
    # attribution"); every detection bar must be.
    missed = [
        f"{b.name}: {b.value:.4f} (target {b.target})" for b in bars if not b.met and b is not kind
    ]
    assert not missed, missed
    # and the report is about the committed bundle's fit challenges
    assert report["meta"]["test images"] == 2000
