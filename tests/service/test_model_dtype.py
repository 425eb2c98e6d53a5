"""``model_dtype``: a real ``gradsentry serve`` runs the demo model in bfloat16 or float16,
reaches SERVING, answers Check, and warns with the measured difference from the float32
CPU precision its bundle was fitted at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.demo import ARTIFACTS, load_demo_model
from detectors.sentry import Sentry
from service.client import ReliabilityClient
from service.config import ConfigError, load_config
from tests.servers import WAIT, serve_process

# The served vector holds more than the probe's norms: the predicted-class loss's norms
# (which cancel near a one-hot softmax), logit statistics and Mahalanobis distances. Its
# median relative difference from the float32 vector, per input, over the 64 demo digits:
# at most 2.8e-2 for bf16 (typical 6.5e-3, ~2^-7) and 6.6e-3 for fp16; 2^-4 leaves 2x on the
# worst. No prediction or flag changed on those 64 digits at either dtype.
SERVED_MEDIAN_RTOL = 2**-4


def _digits(n: int) -> np.ndarray:
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    return images[:n, None]  # [n, 1, 28, 28]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_server_starts_and_answers(tmp_path: Path, dtype: str) -> None:
    import torch

    digits = _digits(3)
    reference = Sentry.load(load_demo_model(), ARTIFACTS / "bundle").check(torch.from_numpy(digits))
    with serve_process(tmp_path, model_dtype=dtype) as server:
        with ReliabilityClient(server.target, timeout=WAIT) as client:
            assert client.health() == "SERVING"
            for i, x in enumerate(digits):
                got = client.check(x, return_features=True)
                assert got.predicted_class == int(reference.logits[i].argmax())
                assert got.flagged == bool(reference.flagged[i])
                assert np.isfinite(got.features).all()
                rel = np.abs(got.features - reference.features[i]) / np.maximum(
                    np.abs(reference.features[i]), 1e-30
                )
                assert np.median(rel) <= SERVED_MEDIAN_RTOL
        log = server.log_text()
    assert f"fitted in float32 on cpu, served in {dtype} on cpu" in log
    assert "flag(s) flip" in log


def test_an_unknown_model_dtype_is_refused() -> None:
    with pytest.raises(ConfigError, match="model_dtype: must be one of"):
        load_config(environ={"GRADSENTRY_MODEL_DTYPE": "float8"})


def test_a_bundle_fitted_on_a_gpu_warns_on_the_cpu(tmp_path: Path, caplog) -> None:
    import json
    import logging
    import shutil

    import torch

    from service import numerics

    bundle = tmp_path / "bundle"
    shutil.copytree(ARTIFACTS / "bundle", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["fitted_on"] = {"device": "cuda", "dtype": "float32", "device_name": "a GPU"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    model = load_demo_model()
    sentry = Sentry.load(model, bundle)
    with caplog.at_level(logging.WARNING, logger="service.numerics"):
        diff = numerics.serve_at(
            sentry, model, torch.device("cpu"), "float32", torch.from_numpy(_digits(4))
        )
    assert diff is not None and diff.fitted == {"device": "cuda", "dtype": "float32"}
    assert diff.feature_rel == 0.0 and diff.flips == 0  # the same computation, here
    assert "fitted on cuda, which this machine does not have" in caplog.text
    assert "served in float32 on cpu" in caplog.text
