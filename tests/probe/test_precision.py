"""Half precision: float16/bfloat16 models give features close to the float32 reference,
summed in float32 (no fp16 overflow), and autocast does not trip the rules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from detectors import GradientProbe
from detectors.demo import ARTIFACTS, load_demo_model
from detectors.precision import MODEL_DTYPES, PrecisionError, cast_model, fitted_on, torch_dtype
from tests.probe.reference import reference_features

# Tolerances of half-precision features against the float32 reference on the 64 demo
# digits. A model in dtype d rounds every op to d's unit roundoff u (bf16: 8 significand
# bits, u = 2^-9; fp16: 11 bits, u = 2^-12); the errors of a few dozen ops through the
# network add up to a few u relative, and squaring a norm doubles them. Measured on the
# demo with one and with two threads (identical): the median relative error is 3.8e-3 for
# bf16 (~2^-8) and 9.1e-4 for fp16; the largest error, relative to its column's scale,
# 3.0e-2 (bf16, the second conv's weight) and 5.8e-2 (fp16, a BatchNorm bias: Σ_t g over
# positions cancels, and small fp16 gradients keep few bits). The bounds leave ≥ 2.5x
# margin on the worst and 4x on the median.
MEDIAN_RTOL = {"bfloat16": 2**-6, "float16": 2**-8}
COLUMN_RTOL = 0.15


def _digits() -> torch.Tensor:
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    return torch.from_numpy(images[:, None])  # [64, 1, 28, 28]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_features_are_close_to_float32(dtype: str) -> None:
    model, x = load_demo_model(), _digits()
    ref_logits, ref = GradientProbe(model).features(x)
    half = cast_model(copy.deepcopy(model), dtype)
    assert next(half.parameters()).dtype == torch_dtype(dtype)
    logits, got = GradientProbe(half).features(x)  # float32 inputs: the probe casts them
    assert got.dtype == torch.float32 and logits.dtype == torch_dtype(dtype)
    assert torch.isfinite(got).all()
    err = (got.double() - ref.double()).abs()
    median = (err / ref.double().abs().clamp_min(1e-30)).median().item()
    column = (err / ref.double().abs().amax(0, keepdim=True)).max().item()
    assert median <= MEDIAN_RTOL[dtype], f"median relative error {median:.2e}"
    assert column <= COLUMN_RTOL, f"max column-relative error {column:.2e}"
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))


def test_norms_are_summed_in_float32_so_fp16_does_not_overflow() -> None:
    """A Linear layer fed values of 300: ‖a‖² = 784·300² ≈ 7e7 and ‖∇W‖² = ‖g‖²‖a‖² are far
    past float16's 65,504, yet every value the model computes fits in float16."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    x = torch.full((3, 1, 28, 28), 300.0) * torch.rand(3, 1, 1, 1)
    names = [n for n, _ in model.named_parameters()]
    want = reference_features(model, x, names)
    half = cast_model(copy.deepcopy(model), "float16")
    _, got = GradientProbe(half).features(x)
    assert torch.isfinite(got).all() and float(want.max()) > 65504
    # fp16 inputs and weights (11 bits) move each product by ~2^-11: 1% is 20x that.
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-2, atol=0)


def test_autocast_does_not_break_the_rules() -> None:
    """Under autocast a conv reads float32 inputs and writes bf16 outputs: the rules get both
    in float32 and sum there (the backward's own kernels would refuse the mix)."""
    model, x = load_demo_model(), _digits()[:8]
    _, ref = GradientProbe(model).features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, got = GradientProbe(model).features(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    column = (got.double() - ref.double()).abs() / ref.double().abs().amax(0, keepdim=True)
    assert column.max().item() <= COLUMN_RTOL


def test_dtype_names() -> None:
    assert MODEL_DTYPES == ("float32", "float16", "bfloat16")
    with pytest.raises(PrecisionError, match="model dtype must be one of"):
        torch_dtype("float8")
    model = cast_model(load_demo_model(), "bfloat16")
    assert fitted_on(model) == {"device": "cpu", "dtype": "bfloat16"}


def test_the_config_knows_the_same_dtypes() -> None:
    from service.config import MODEL_DTYPES as CONFIG_DTYPES

    assert CONFIG_DTYPES == MODEL_DTYPES
