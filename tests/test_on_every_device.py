"""What must hold on every device: probe exactness, batch invariance of the served answers,
and the model worker end to end. CI has only the CPU; on a GPU machine every test here runs
once per CUDA device as well (``tests/devices.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import GradientProbe
from detectors.demo import ARTIFACTS, load_demo_model
from service.client import ReliabilityClient
from service.config import load_config
from service.engine.worker import start_pipeline
from tests.devices import DEVICES
from tests.probe.reference import reference_features
from tests.servers import demo_server

# Relative tolerance of batched against one-sample-at-a-time features: the per-sample
# rules sum in another order than autograd (float32, ~1e-6 typical), and features that
# cancel (the predicted-class gradient near a one-hot softmax) amplify that; 1e-4 is the
# probe's stated exactness on every architecture.
PROBE_RTOL = 1e-4
# The server's padding makes an input's answer independent of its batch up to float64
# noise of the statistics after the model: the very criterion its calibration uses.
SAME_RTOL = 1e-9


def demo_digits(n: int) -> np.ndarray:
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    return np.stack([images[i % len(images)] for i in range(n)])[:, None]


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("device", DEVICES)
def test_probe_is_exact_on_the_device(device: str, batch: int) -> None:
    model = load_demo_model().to(device)
    x = torch.from_numpy(demo_digits(batch)).to(device)
    _, got = GradientProbe(model).features(x)
    want = reference_features(model, x, [n for n, _ in model.named_parameters()])
    assert got.device.type == torch.device(device).type
    scale = want.abs().amax(dim=0, keepdim=True).clamp_min(1e-30)
    err = ((got.double() - want.double()).abs() / scale).max().item()
    assert err <= PROBE_RTOL, f"max column-relative error {err:.2e} on {device}"


@pytest.mark.parametrize("device", DEVICES)
def test_an_answer_is_the_same_alone_or_batched_on_the_device(device: str) -> None:
    config = load_config(environ={"GRADSENTRY_DEVICE": device, "GRADSENTRY_MODEL_WORKER": "inline"})
    pipeline = start_pipeline(config)  # one torch thread, as the server computes
    pipeline.calibrate()
    inputs = list(demo_digits(12)[:, None])  # twelve [1, 1, 28, 28] inputs
    batched = pipeline.run(inputs)
    for i in (0, 5, 11):
        (alone,) = pipeline.run([inputs[i]])
        np.testing.assert_allclose(alone.features, batched[i].features, rtol=SAME_RTOL, atol=0)
        assert alone.score == pytest.approx(batched[i].score, rel=SAME_RTOL, abs=0)
        assert alone.flagged == batched[i].flagged


@pytest.mark.parametrize("device", DEVICES)
def test_the_model_worker_serves_on_the_device(device: str) -> None:
    samples = np.load(ARTIFACTS / "samples.npz")
    with (
        demo_server(GRADSENTRY_DEVICE=device, GRADSENTRY_MODEL_WORKER="process") as (_, port),
        ReliabilityClient(f"127.0.0.1:{port}", timeout=60) as client,
    ):
        results = client.check_batch(list(samples["images"][:8]))
    assert [r.predicted_class for r in results] == [int(v) for v in samples["labels"][:8]]
