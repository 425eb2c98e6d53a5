"""Squeezed views: the median view against scipy, its feature column against an independent
computation in any batch composition, its spec, and the errors a user can meet."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter
from scipy.special import softmax
from torch import nn

from detectors.features import FeatureExtractor
from detectors.views import SHIFT_FLOOR, VIEWS, check_views, median, stretch

# The view column is |softmax(f(x)) - softmax(f(view(x)))|_1 of two float32 forward passes.
# Another batch size may sum the float32 layers in another order: ~1e-7 relative on each
# probability, and the L1 of 10 differences moves by a few 1e-7 at most; 1e-5 absolute is
# that with margin on any thread count and still far below the shifts that matter (~1e-2).
SHIFT_ATOL = 1e-5


@pytest.fixture(scope="module")
def batch(digits: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """float32 [24, 1, 28, 28]: clean digits."""
    return torch.from_numpy(digits[0][1200:1224])


@pytest.fixture(scope="module")
def viewed(digits_model: nn.Module) -> FeatureExtractor:
    """Logit statistics and the median view only: nothing to fit."""
    return FeatureExtractor(
        digits_model, losses=["all_ones"], layers=(), novelty=False, views=["median"]
    )


def _reference_shift(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """[N]: one image at a time, the view made by scipy, the softmax by scipy."""
    out = []
    for img in images:
        with torch.no_grad():
            z = model(torch.from_numpy(img[None])).double().numpy()
            squeezed = median_filter(img[None], size=(1, 1, 3, 3), mode="nearest")
            zv = model(torch.from_numpy(squeezed)).double().numpy()
        out.append(max(np.abs(softmax(z, 1) - softmax(zv, 1)).sum(), SHIFT_FLOOR))
    return np.array(out)


def test_median_view_equals_scipy() -> None:
    x = np.random.default_rng(0).random((3, 2, 9, 7)).astype(np.float32)
    # A median picks one of the nine values: equal to the bit, edges included.
    np.testing.assert_array_equal(
        median(torch.from_numpy(x)).numpy(),
        median_filter(x, size=(1, 1, 3, 3), mode="nearest"),
    )


def test_median_view_refuses_what_is_not_an_image_batch() -> None:
    with pytest.raises(ValueError, match=r"image batches \[B, C, H, W\], got shape \(4, 10\)"):
        median(torch.zeros(4, 10))


def test_unknown_or_repeated_views_are_refused(digits_model: nn.Module) -> None:
    with pytest.raises(
        ValueError, match=r"unknown view\(s\) \['blur'\]; known: \['median', 'stretch'\]"
    ):
        FeatureExtractor(digits_model, views=["blur"])
    with pytest.raises(ValueError, match="name one view twice"):
        check_views(["median", "median"])


def test_view_column_is_the_prediction_shift_in_any_batch(
    viewed: FeatureExtractor, batch: torch.Tensor, digits_model: nn.Module
) -> None:
    col = len(viewed.schema) - 1
    assert viewed.schema[col] == {
        "name": "view/median/shift",
        "group": "view",
        "shape": [],
        "log": True,  # shifts span 1e-6..2: H reads their ratios
    }
    # Clean digits and the same digits with sparse salt noise, which the median undoes.
    salted = batch.clone()
    salted[:, :, ::5, ::5] = 1.0
    images = torch.cat([batch, salted]).numpy()
    expected = _reference_shift(digits_model, images)
    assert expected[len(batch) :].mean() > 10 * expected[: len(batch)].mean()
    for size in (len(images), 7, 1):
        got = viewed.extract_images(images, batch_size=size).features[:, col]
        np.testing.assert_allclose(got, expected, rtol=0, atol=SHIFT_ATOL)


def test_views_round_trip_and_old_specs_load_without_them(
    viewed: FeatureExtractor, batch: torch.Tensor, digits_model: nn.Module
) -> None:
    spec = json.loads(json.dumps(viewed.to_dict()))
    assert spec["views"] == ["median"]
    rebuilt = FeatureExtractor.from_dict(digits_model, spec)
    assert rebuilt.schema == viewed.schema
    np.testing.assert_array_equal(rebuilt.extract(batch).features, viewed.extract(batch).features)
    # A bundle written before views existed has no "views" key: no view column.
    del spec["views"]
    old = FeatureExtractor.from_dict(digits_model, spec)
    assert old.views == () and len(old.schema) == len(viewed.schema) - 1
    with pytest.raises(ValueError, match="unknown view"):
        FeatureExtractor.from_dict(digits_model, {**spec, "views": ["sharpen"]})


def test_every_registered_view_keeps_the_shape(batch: torch.Tensor) -> None:
    for name, view in VIEWS.items():
        out = view(batch)
        assert out.shape == batch.shape and out.dtype == batch.dtype, name


def test_stretch_spreads_each_image_over_the_unit_range() -> None:
    """A dimmed, hazed image comes back to [0, 1] exactly (min 0, max 1, same order);
    a flat image stays finite."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    hazed = 0.3 + 0.4 * x  # [0.3, 0.7]
    flat = np.full((1, 1, 28, 28), 0.5, np.float32)
    out = stretch(torch.from_numpy(np.concatenate([hazed, flat]))).numpy()
    assert out.shape == (4, 1, 28, 28) and out.dtype == np.float32
    # float32 rounding of (x - min) / ptp: a few ulps of 1
    np.testing.assert_allclose(out[:3], stretch(torch.from_numpy(x)).numpy(), atol=1e-6)
    assert out[:3].min() == 0.0 and np.allclose(out[:3].max(axis=(1, 2, 3)), 1.0)
    assert np.isfinite(out[3]).all() and (out[3] == 0).all()


def test_median_removes_isolated_pixels() -> None:
    """One white pixel on black is removed; a 3x3 block survives."""
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 5, 5] = 1.0
    x[0, 0, 10:13, 10:13] = 1.0
    out = median(torch.from_numpy(x)).numpy()
    assert out[0, 0, 5, 5] == 0.0 and out[0, 0, 11, 11] == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_views_run_on_a_half_precision_model(
    dtype: torch.dtype, batch: torch.Tensor, digits_model: nn.Module
) -> None:
    """A float16/bfloat16 model gets float32 inputs, which the probe casts; the views are
    cast the same way (the served half-precision demo failed without it)."""
    half = copy.deepcopy(digits_model).to(dtype)
    ext = FeatureExtractor(half, losses=["all_ones"], layers=(), novelty=False, views=list(VIEWS))
    cols = ext.extract(batch).features[:, -len(VIEWS) :]
    assert np.isfinite(cols).all() and (cols >= SHIFT_FLOOR).all() and (cols <= 2).all()
