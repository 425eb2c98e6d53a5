"""Batched probe features equal a one-sample-at-a-time autograd reference."""

from __future__ import annotations

import gc
import types

import pytest
import torch

from detectors import GradientProbe
from tests.probe.nets import NETS, CountBackward, randomise_batchnorm
from tests.probe.reference import reference_features

RTOL = 1e-4


def _build(name: str, batch: int, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    factory, shape = NETS[name]
    model = randomise_batchnorm(factory(), seed)
    x = torch.randn(batch, *shape)
    return model, x


def assert_close_rel(got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.double(), want.double()
    scale = want.abs().clamp_min(1e-12)
    rel = ((got - want).abs() / scale).max().item()
    # Tiny norms are compared against the largest feature of their column instead.
    col = want.abs().amax(dim=0, keepdim=True).clamp_min(1e-30)
    mixed = ((got - want).abs() / torch.maximum(scale, col * 1e-6)).max().item()
    assert min(rel, mixed) <= RTOL, f"max relative error {rel:.2e} (column-scaled {mixed:.2e})"


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("name", sorted(NETS))
def test_features_match_per_sample_reference(name: str, batch: int) -> None:
    model, x = _build(name, batch)
    probe = GradientProbe(model)
    logits, feats = probe.features(x)
    assert feats.shape == (batch, len(probe.feature_names))
    assert probe.feature_names == [n for n, p in model.named_parameters() if p.requires_grad]
    want = reference_features(model, x, probe.feature_names)
    assert_close_rel(feats, want)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(NETS))
def test_shuffling_the_batch_permutes_rows(name: str) -> None:
    model, x = _build(name, 16, seed=1)
    probe = GradientProbe(model)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    _, feats = probe.features(x)
    _, shuffled = probe.features(x[perm])
    torch.testing.assert_close(shuffled, feats[perm], rtol=1e-4, atol=0)
    # and a sample scored alone gets the same row as inside the batch
    _, alone = probe.features(x[5:6])
    torch.testing.assert_close(alone[0], feats[5], rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", sorted(NETS))
def test_model_left_untouched(name: str) -> None:
    model, x = _build(name, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    GradientProbe(model).features(x)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # no hooks are left behind
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_other_losses_match_reference() -> None:
    model, x = _build("resnet", 7)
    probe = GradientProbe(model)
    out = probe.run(x, losses=["all_ones", "predicted", "runner_up"])
    for loss, feats in out.features.items():
        assert_close_rel(feats, reference_features(model, x, probe.feature_names, loss))


def test_param_selection_and_frozen_params() -> None:
    model, x = _build("cnn_bn_inplace", 7)
    for p in model.body.parameters():
        p.requires_grad_(False)
    default = GradientProbe(model)
    assert all(not n.startswith("body.") for n in default.feature_names)
    chosen = ["head.bias", "body.0.weight", "bn1d.weight"]
    probe = GradientProbe(model, params=chosen)
    assert probe.feature_names == ["body.0.weight", "bn1d.weight", "head.bias"]  # model order
    _, feats = probe.features(x)
    assert_close_rel(feats, reference_features(model, x, probe.feature_names))
    assert all(not p.requires_grad for p in model.body.parameters())


@pytest.mark.parametrize(
    ("params", "crossings"),
    [
        (None, 1),
        (["head.weight", "head.bias"], 0),
        (["other.conv.weight", "head.weight"], 1),
        (["other.gain"], 1),
    ],
)
def test_backward_stops_at_the_first_probed_layers(params, crossings: int) -> None:
    """Autograd never walks from a probed layer towards the input pixels (nothing there
    is a feature), but still through every layer between probed ones."""
    model, x = _build("two_tower", 6)
    probe = GradientProbe(model, params=params)
    CountBackward.calls = 0
    out = probe.run(x, losses=["all_ones", "predicted"])
    # Per loss: the towers -> head crossing only while a tower layer is probed; never the
    # input -> tower one.
    assert CountBackward.calls == 2 * crossings
    for loss, feats in out.features.items():
        assert_close_rel(feats, reference_features(model, x, probe.feature_names, loss))


@pytest.mark.parametrize("name", sorted(NETS))
def test_a_call_leaves_nothing_of_its_graph_alive(name: str) -> None:
    """Each call's graph (its nodes, hooks and saved activations) is freed when it returns:
    no reference cycle through the autograd graph, which Python's collector cannot see
    and break, keeps it alive. Counted as the tensors and probe hooks alive after repeated
    calls (not all objects: other tests' server threads may still be allocating)."""
    model, x = _build(name, 5)
    probe = GradientProbe(model)
    probe.run(x, losses=["all_ones", "predicted"])  # first-call caches
    before = _probe_objects()
    for _ in range(20):
        probe.run(x, losses=["all_ones", "predicted"])
    assert _probe_objects() - before < 5


def _probe_objects() -> int:
    """Live tensors and functions made by the probe's module (its hooks), after a collection."""
    gc.collect()
    # type(o), not isinstance: isinstance reads ``__class__``, which some live objects
    # (torch.distributed's deprecated reduce_op) answer with a FutureWarning each time.
    return sum(
        issubclass(type(o), torch.Tensor)
        or (
            type(o) is types.FunctionType
            and o.__module__ in ("detectors.probe.core", "detectors.probe.ops")
        )
        for o in gc.get_objects()
    )


def test_features_under_no_grad_and_in_float64() -> None:
    model, x = _build("mlp", 5)
    model = model.double()
    probe = GradientProbe(model)
    with torch.no_grad():
        _, feats = probe.features(x.double())
    assert_close_rel(feats, reference_features(model, x.double(), probe.feature_names))
