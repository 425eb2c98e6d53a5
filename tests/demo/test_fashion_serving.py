"""The Fashion-MNIST demo served by the real sidecar from its shipped config file."""

from __future__ import annotations

import numpy as np
import torch

from detectors.demo.datasets import FASHION
from detectors.demo.fashion_train import CLASSES
from detectors.sentry import Sentry
from service import check, cli
from service.client import ReliabilityClient
from service.config import load_config
from service.server import create_server
from tests.servers import SCORE_ATOL

CONFIG = FASHION.artifacts / "serve.yaml"


def test_the_shipped_config_serves_the_fashion_demo(capsys) -> None:
    """Its relative paths resolve to the committed model and bundle: the sample images get
    the in-process predictions, class names and scores; uniform noise, the fitted OOD kind,
    is flagged and named "ood". ``gradsentry check --demo`` recognises the Fashion-MNIST
    model and shows, row by row, the in-process verdicts and kinds of its inputs."""
    config = load_config(
        CONFIG,
        environ={
            "GRADSENTRY_PORT": "0",
            "GRADSENTRY_METRICS_PORT": "0",
            "GRADSENTRY_DEVICE": "cpu",
        },
    )
    samples = np.load(FASHION.artifacts / "samples.npz")
    images = (samples["images"][:12].astype(np.float32) / 255.0)[:, None]  # [12, 1, 28, 28]
    noise = np.random.default_rng(0).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    torch.set_num_threads(1)
    reference = Sentry.load(FASHION.load_model(), FASHION.artifacts / "bundle").check(
        torch.from_numpy(np.concatenate([images, noise]))
    )
    demo = check.demo_inputs("fashion")
    demo_ref = Sentry.load(FASHION.load_model(), FASHION.artifacts / "bundle").check(
        torch.from_numpy(np.stack([d.image for d in demo]))
    )
    running, port = create_server(config)
    try:
        with ReliabilityClient(f"127.0.0.1:{port}") as client:
            answers = [client.check(x) for x in (*images, *noise)]
        capsys.readouterr()
        assert cli.main(["check", "--demo", "--target", f"127.0.0.1:{port}"]) == 0
        table = capsys.readouterr()
    finally:
        running.stop(None).wait(10)
    assert [a.predicted_class for a in answers] == reference.predicted.tolist()
    assert [a.label for a in answers] == [CLASSES[int(c)] for c in reference.predicted]
    # SCORE_ATOL: the server's batch shapes differ from the reference's (tests/servers.py)
    np.testing.assert_allclose([a.score for a in answers], reference.score, atol=SCORE_ATOL)
    # the committed samples are test images with their labels: the classifier gets most right
    right = reference.predicted[:12] == samples["labels"][:12]
    assert right.mean() >= 0.75, right
    assert [(a.flagged, a.kind) for a in answers[12:]] == [(True, "ood")] * 3
    # the CLI table: the served model is the bundled Fashion-MNIST one (no note); every row
    # has the in-process verdict and kind (the kind scores' top two differ by > 0.3 on these
    # inputs, far beyond SCORE_ATOL, so batch composition cannot swap them)
    assert table.err == ""
    lines = table.out.splitlines()
    assert lines[0] == "demo: fashion"
    rows = [line.split() for line in lines[2:-1]]
    assert [row[0] for row in rows] == [d.kind for d in demo]
    assert [row[0] for row in rows] == ["clean"] * 3 + ["adversarial"] * 3 + ["corrupted"] * 3 + [
        "ood"
    ] * 3
    assert [row[3] == "FLAGGED" for row in rows] == demo_ref.flagged.tolist()
    shown = [k if f else "-" for k, f in zip(demo_ref.kind, demo_ref.flagged, strict=True)]
    assert [row[5] for row in rows] == shown
    assert lines[-1].endswith("clean 0/3, adversarial 3/3, corrupted 3/3, ood 3/3")
