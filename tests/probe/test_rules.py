"""Every registered rule, each formula branch, and the probe's refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from detectors import GradientProbe
from detectors.probe.registry import ProbeError, registered_functionals, registered_types
from detectors.probe.rules._outer import outer_sum_sq_norm
from tests.probe.reference import reference_features
from tests.probe.test_exactness import assert_close_rel


class Wrap(nn.Module):
    """layer followed by a Linear head, input prepared by ``prep``."""

    def __init__(
        self, layer: nn.Module, prep: Callable[[torch.Tensor], torch.Tensor], width: int
    ) -> None:
        super().__init__()
        self.layer, self.prep = layer, prep
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.layer(self.prep(x))).flatten(1))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return (x[:, :6].abs() * 9).long() % 12


# One example per registered type: (layer, input prep, flattened width, input features).
EXAMPLES: dict[type[nn.Module], Callable[[], tuple[nn.Module, Callable, int]]] = {
    nn.Linear: lambda: (nn.Linear(12, 9), lambda x: x.reshape(-1, 2, 12), 18),
    nn.Conv1d: lambda: (nn.Conv1d(4, 3, 3, padding=1), lambda x: x.reshape(-1, 4, 6), 18),
    nn.Conv2d: lambda: (nn.Conv2d(2, 3, 2, stride=2), lambda x: x.reshape(-1, 2, 3, 4), 6),
    nn.BatchNorm1d: lambda: (nn.BatchNorm1d(4), lambda x: x.reshape(-1, 4, 6), 24),
    nn.BatchNorm2d: lambda: (nn.BatchNorm2d(2), lambda x: x.reshape(-1, 2, 3, 4), 24),
    nn.LayerNorm: lambda: (nn.LayerNorm([3, 4]), lambda x: x.reshape(-1, 2, 3, 4), 24),
    nn.GroupNorm: lambda: (nn.GroupNorm(2, 4), lambda x: x.reshape(-1, 4, 6), 24),
    nn.Embedding: lambda: (nn.Embedding(12, 3, padding_idx=2), _tokens, 18),
}


def test_every_registered_rule_has_an_example() -> None:
    missing = [t.__name__ for t in registered_types() if t not in EXAMPLES]
    assert not missing, f"add an exactness example for {missing}"


@pytest.mark.parametrize("layer_type", registered_types(), ids=lambda t: t.__name__)
def test_registered_rule_matches_reference(layer_type: type[nn.Module]) -> None:
    torch.manual_seed(0)
    layer, prep, width = EXAMPLES[layer_type]()
    model = Wrap(layer, prep, width)
    for m in model.modules():  # non-trivial running stats and affine params
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    model.eval()
    x = torch.randn(9, 24)
    probe = GradientProbe(model)
    assert any(n.startswith("layer.") for n in probe.feature_names)
    _, feats = probe.features(x)
    assert_close_rel(feats, reference_features(model, x, probe.feature_names))


@pytest.mark.parametrize(("t", "d", "p"), [(2, 50, 60), (40, 3, 4)])  # ghost, materialised
def test_outer_norm_branches_agree_with_materialised(t: int, d: int, p: int) -> None:
    a, g = torch.randn(5, t, d, dtype=torch.float64), torch.randn(5, t, p, dtype=torch.float64)
    want = torch.einsum("ntp,ntd->npd", g, a).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(outer_sum_sq_norm(a, g), want)


def test_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ProbeError, match="eval"):
        GradientProbe(model.train()).features(torch.randn(2, 4))


def test_batchnorm_without_running_stats_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False)).eval()
    with pytest.raises(ProbeError, match="batch statistics"):
        GradientProbe(model).features(torch.randn(2, 4))


def test_tied_weights_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    with pytest.raises(ProbeError, match="shared"):
        GradientProbe(model)


def test_module_called_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    with pytest.raises(ProbeError, match="ran twice"):
        GradientProbe(Twice().eval()).features(torch.randn(3, 4))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(3, 4, dtype=torch.long), "float tensor"),
        (torch.zeros(0, 4), "non-empty"),
        (torch.zeros(4), "non-empty"),
    ],
)
def test_bad_input_is_refused(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ProbeError, match=match):
        GradientProbe(nn.Linear(4, 3).eval()).features(x)


def test_unknown_names_are_refused() -> None:
    model = nn.Linear(4, 3).eval()
    with pytest.raises(ProbeError, match="unknown parameter"):
        GradientProbe(model, params=["nope"])
    with pytest.raises(ValueError, match="unknown confounding loss"):
        GradientProbe(model, loss="nope")


def test_inference_mode_is_refused() -> None:
    probe = GradientProbe(nn.Linear(4, 3).eval())
    with torch.inference_mode(), pytest.raises(ProbeError, match="inference_mode"):
        probe.features(torch.randn(2, 4))


@pytest.mark.parametrize(
    "conv",
    [
        # wide layers on few positions take the ghost branch ...
        nn.Conv2d(32, 32, 3, padding=1, groups=2),
        nn.Conv2d(32, 24, 2, stride=1, dilation=2, padding=1, padding_mode="reflect"),
        nn.Conv1d(48, 32, 3, padding="same", padding_mode="circular"),
        # ... narrow layers on many positions materialise per-sample weight gradients
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="replicate"),
        nn.Conv1d(4, 6, 5, padding="same"),
        # ... depthwise layers: a forward convolution with g as the kernel
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),
        nn.Conv2d(6, 6, (5, 3), dilation=(1, 2), padding=(2, 1), groups=6, bias=False),
        nn.Conv1d(4, 4, 3, stride=3, padding=2, dilation=2, groups=4),
    ],
    ids=[
        "ghost-grouped",
        "ghost-reflect",
        "ghost-1d-circular",
        "mat-replicate",
        "mat-1d-same",
        "depthwise-strided",
        "depthwise-dilated",
        "depthwise-1d",
    ],
)
def test_conv_branches_match_reference(conv: nn.Module) -> None:
    from detectors.probe.rules.conv import conv_norms  # noqa: F401  (the rule under test)

    torch.manual_seed(0)
    is_2d = isinstance(conv, nn.Conv2d)
    c_in = conv.in_channels
    shape = (c_in, 3, 3) if is_2d and c_in >= 32 else (c_in, 12, 12) if is_2d else None
    if shape is None:
        shape = (c_in, 4) if c_in >= 32 else (c_in, 40)
    with torch.no_grad():
        width = conv(torch.zeros(1, *shape)).numel()
    model = Wrap(conv, lambda x: x, width).eval()
    x = torch.randn(6, *shape)
    probe = GradientProbe(model)
    _, feats = probe.features(x)
    assert_close_rel(feats, reference_features(model, x, probe.feature_names))


class FunctionalCall(nn.Module):
    """A module with no rule that calls ``func`` with its own weight (and bias)."""

    def __init__(self, func: Callable, weight: torch.Tensor, bias: torch.Tensor | None, **kw):
        super().__init__()
        self.func, self.kw = func, kw
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.func is torch.nn.functional.layer_norm:
            return self.func(x, self.kw["shape"], self.weight, self.bias)
        return self.func(x, self.weight, self.bias, **self.kw)


# One example per registered functional op: (module, input prep, flattened width).
FUNCTIONAL_EXAMPLES: dict[Callable, Callable[[], tuple[nn.Module, Callable, int]]] = {
    torch.nn.functional.linear: lambda: (
        FunctionalCall(torch.nn.functional.linear, torch.randn(5, 12), torch.randn(5)),
        lambda x: x.reshape(-1, 2, 12),
        10,
    ),
    torch.nn.functional.conv1d: lambda: (
        FunctionalCall(
            torch.nn.functional.conv1d, torch.randn(3, 2, 3), torch.randn(3), padding="same"
        ),
        lambda x: x.reshape(-1, 2, 12),
        36,
    ),
    torch.nn.functional.conv2d: lambda: (
        FunctionalCall(
            torch.nn.functional.conv2d, torch.randn(6, 1, 3, 3), None, stride=2, groups=2
        ),
        lambda x: torch.nn.functional.pad(x.reshape(-1, 2, 3, 4), (1, 1, 1, 1)),
        24,
    ),
    torch.nn.functional.layer_norm: lambda: (
        FunctionalCall(
            torch.nn.functional.layer_norm, torch.rand(4) + 0.5, torch.randn(4), shape=(4,)
        ),
        lambda x: x.reshape(-1, 6, 4),
        24,
    ),
}


def test_every_functional_rule_has_an_example() -> None:
    missing = [f.__name__ for f in registered_functionals() if f not in FUNCTIONAL_EXAMPLES]
    assert not missing, f"add an exactness example for {missing}"


@pytest.mark.parametrize("func", registered_functionals(), ids=lambda f: f.__name__)
def test_registered_functional_rule_matches_reference(func: Callable) -> None:
    torch.manual_seed(0)
    layer, prep, width = FUNCTIONAL_EXAMPLES[func]()
    model = Wrap(layer, prep, width).eval()
    x = torch.randn(9, 24)
    probe = GradientProbe(model)
    _, feats = probe.features(x)
    assert_close_rel(feats, reference_features(model, x, probe.feature_names))


def test_parameter_used_by_two_rule_sites_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lin = torch.nn.functional.linear
            return lin(torch.tanh(lin(x, self.weight)), self.weight)

    with pytest.raises(ProbeError, match="more than one op"):
        GradientProbe(Twice().eval()).features(torch.randn(3, 4))
