"""CUDA numerics and batch shapes, checked on the CPU: ``cuda_numerics`` sets torch's real
global flags (readable without a GPU), and a GPU pipeline's fixed batch size (every batch
padded to max_batch_size) gives each input the answer it gets alone. Warm-up and
calibration run batches of max_batch_size rows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from detectors.demo import ARTIFACTS
from detectors.sentry import Sentry
from detectors.verdicts import Verdicts
from service.config import ConfigError, load_config
from service.engine.pipeline import Pipeline
from service.numerics import CUBLAS_WORKSPACE, apply_cuda_numerics, cuda_numerics_state

# Answers of one pipeline for one input, batched or alone: float64 noise of the statistics
# after the model, the criterion the pipeline's own calibration uses.
SAME_RTOL = 1e-9


@pytest.fixture()
def restore_flags() -> Iterator[None]:
    """Put torch's global flags back as they were: other tests run in this process."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        precision,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        deterministic,
        warn_only,
    ) = saved
    torch.set_float32_matmul_precision(precision)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def test_deterministic_turns_tf32_off_and_asks_for_deterministic_kernels(restore_flags) -> None:
    apply_cuda_numerics("fast", environ={})  # start from the opposite
    env: dict[str, str] = {}
    state = apply_cuda_numerics("deterministic", environ=env)
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()  # warn, never fail a request
    assert env["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert state == cuda_numerics_state(env)
    # An operator's own workspace setting is kept.
    env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    apply_cuda_numerics("deterministic", environ=env)
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_fast_allows_tf32_and_benchmarking(restore_flags) -> None:
    apply_cuda_numerics("deterministic", environ={})
    state = apply_cuda_numerics("fast", environ={})
    assert state["matmul_allow_tf32"] is True and state["cudnn_allow_tf32"] is True
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_setting_is_checked() -> None:
    assert load_config(environ={}).cuda_numerics == "deterministic"
    with pytest.raises(ConfigError, match="cuda_numerics: must be one of"):
        load_config(environ={"GRADSENTRY_CUDA_NUMERICS": "tf32"})
    with pytest.raises(ValueError, match="cuda_numerics must be"):
        apply_cuda_numerics("tf32", environ={})


class RecordingPipeline(Pipeline):
    """The real demo pipeline, recording the number of rows of every batch it scores."""

    def __init__(self, max_batch_size: int, fixed_batch: bool) -> None:
        spec = load_config(environ={}).input_spec()
        sentry = Sentry.load(_demo_model(), ARTIFACTS / "bundle", device="cpu")
        super().__init__(sentry, spec, torch.device("cpu"), max_batch_size)
        self.fixed_batch = fixed_batch  # what a "cuda" device sets
        self.rows: list[int] = []

    def _check(self, batch: np.ndarray) -> Verdicts:
        self.rows.append(len(batch))
        return super()._check(batch)


def _demo_model() -> torch.nn.Module:
    from detectors.demo import load_demo_model

    torch.set_num_threads(1)
    return load_demo_model()


def _digits(n: int) -> list[np.ndarray]:
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    return [images[i][None, None] for i in range(n)]


def test_a_gpu_pipeline_pads_every_batch_to_max_batch_size() -> None:
    pipeline = RecordingPipeline(max_batch_size=8, fixed_batch=True)
    pipeline.warm_up()
    assert pipeline.min_rows == 8
    assert set(pipeline.rows) == {8}  # warm-up and calibration ran full batches only
    pipeline.rows.clear()
    inputs = _digits(11)
    batched = pipeline.run(inputs)  # 8 + 3, the 3 padded to 8
    assert pipeline.rows == [8, 8]
    for i in (0, 4, 9, 10):
        (alone,) = pipeline.run([inputs[i]])
        np.testing.assert_allclose(alone.features, batched[i].features, rtol=SAME_RTOL, atol=0)
        assert alone.score == pytest.approx(batched[i].score, rel=SAME_RTOL, abs=0)
    assert set(pipeline.rows) == {8}


def test_warm_up_and_calibration_cover_max_batch_size() -> None:
    pipeline = RecordingPipeline(max_batch_size=32, fixed_batch=False)
    pipeline.warm_up()
    assert pipeline.rows[0] == 32  # warm-up: one full batch first
    assert pipeline.rows[1] == 32  # calibration's reference: max_batch_size rows
    assert 1 <= pipeline.min_rows <= 32
