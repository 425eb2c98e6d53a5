"""Exact features on the architectures users deploy (small configurations)."""

from __future__ import annotations

import copy

import pytest
import torch

from detectors import GradientProbe
from detectors.probe.registry import ProbeError
from tests.probe.architectures import ARCHITECTURES, swin
from tests.probe.reference import reference_features

RTOL = 1e-4
# The probe runs in float32, as deployed; the reference in float64 on a copy of the model.
# Against a float32 reference, a 70-layer pretrained network's one-sample kernels round
# differently from the batched ones (other conv algorithms per batch size) and features
# that are sums with cancellation (a BatchNorm weight's Σ g·x̂) differ by up to ~2e-4 —
# noise of the float32 reference, measured at ~1e-5 against float64.
ZERO_FLOOR = 1e-10


def assert_features_match(got: torch.Tensor, want: torch.Tensor, names: list[str]) -> None:
    got, want = got.double(), want.double()
    floor = want.abs().amax(dim=1, keepdim=True) * ZERO_FLOOR
    err = (got - want).abs()
    ok = torch.where(want.abs() > floor, err <= RTOL * want.abs(), err <= floor)
    if not bool(ok.all()):
        rel = (err / want.abs().clamp_min(1e-300)).masked_fill(ok, 0).amax(0)
        worst = sorted(zip(rel.tolist(), names, strict=True), reverse=True)[:5]
        raise AssertionError(f"features differ from the per-sample reference: {worst}")


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def architecture(
    request: pytest.FixtureRequest,
) -> tuple[str, torch.nn.Module, torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    factory, shape = ARCHITECTURES[request.param]
    model = factory().eval()
    return request.param, model, copy.deepcopy(model).double(), shape


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_features_match_per_sample_reference(architecture, batch: int) -> None:
    _, model, model64, shape = architecture
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
    probe = GradientProbe(model)
    logits, feats = probe.features(x)
    assert feats.shape == (batch, len(probe.feature_names))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float64 convolutions on 2 threads run ~10x slower here than on 1
    try:
        want = reference_features(model64, x.double(), probe.feature_names)
    finally:
        torch.set_num_threads(threads)
    assert_features_match(feats, want, probe.feature_names)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_window_partitioned_attention_is_refused() -> None:
    """Swin folds windows into the first dim: per-row norms would be per window, not per
    sample. The probe says so instead of returning wrong features."""
    torch.manual_seed(0)
    model = swin().eval()
    with pytest.raises(ProbeError, match="first dim is not the batch size"):
        GradientProbe(model).features(torch.randn(2, 3, 32, 32))
