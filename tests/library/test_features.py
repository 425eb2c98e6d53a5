"""FeatureExtractor: gradient norms, logit statistics, Mahalanobis distances, and its spec.

Every column is checked against an independent computation: the probe for gradient
norms, closed formulas for the logit statistics, the evaluation baseline and plain
hooks + NumPy for the Mahalanobis distances.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import entropy
from torch import nn

from detectors.evaluate.baselines import Mahalanobis
from detectors.evaluate.baselines.mahalanobis import fit_tied_gaussian
from detectors.features import LOGIT_STATS, FeatureExtractor
from detectors.probe import GradientProbe

LOSSES = ("all_ones", "predicted")


@pytest.fixture(scope="module")
def stats_split(digits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [300, 1, 28, 28], int64 [300]): clean labelled digits for the statistics."""
    images, labels = digits
    return images[300:600], labels[300:600]


@pytest.fixture(scope="module")
def batch(digits: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """float32 [24, 1, 28, 28]: digits disjoint from the statistics split."""
    return torch.from_numpy(digits[0][1200:1224])


@pytest.fixture(scope="module")
def extractor(
    digits_model: nn.Module, stats_split: tuple[np.ndarray, np.ndarray]
) -> FeatureExtractor:
    """Two losses, every logit statistic, default layers and novelty, fitted."""
    return FeatureExtractor(digits_model, losses=LOSSES).fit(*stats_split)


def _index(ext: FeatureExtractor) -> dict[str, int]:
    """Column name -> position."""
    return {c["name"]: i for i, c in enumerate(ext.schema)}


def _group(ext: FeatureExtractor, group: str) -> list[int]:
    return [i for i, c in enumerate(ext.schema) if c["group"] == group]


def _layer_inputs(model: nn.Module, layer: str, images: np.ndarray) -> np.ndarray:
    """float64 [N, D]: the input of ``layer``, per channel mean then max for conv inputs."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            model(torch.from_numpy(images))
    finally:
        handle.remove()
    a = seen[0].double().numpy()
    if a.ndim > 2:
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        a = np.concatenate([flat.mean(2), flat.max(2)], axis=1)
    return a


def _distances(fit: np.ndarray, labels: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[N, K]: Mahalanobis distance of each row of x to each class mean of ``fit``."""
    _, means, whitener = fit_tied_gaussian(fit, labels)
    diff = (x[:, None, :] - means[None]) @ whitener
    return np.sqrt((diff**2).sum(-1))


def test_schema_describes_every_column(
    extractor: FeatureExtractor, batch: torch.Tensor, digits_model: nn.Module
) -> None:
    feats = extractor.extract(batch).features
    schema = extractor.schema
    params = dict(digits_model.named_parameters())
    assert feats.shape == (len(batch), len(schema))
    names = [c["name"] for c in schema]
    assert len(set(names)) == len(names)
    assert len(_group(extractor, "gradient")) == len(LOSSES) * len(params)
    for loss in LOSSES:
        for p, tensor in params.items():
            assert schema[names.index(f"grad/{loss}/{p}")] == {
                "name": f"grad/{loss}/{p}",
                "group": "gradient",
                "shape": list(tensor.shape),
                "log": True,
            }
    assert [names[i] for i in _group(extractor, "logit")] == [f"logit/{s}" for s in LOGIT_STATS]
    assert f"activation/{HEAD}/mahalanobis" in names
    # Norms and distances are logged by H; logit statistics (which can be negative) are not.
    expected_log = [c["group"] != "logit" for c in schema]
    np.testing.assert_array_equal(extractor.log_columns, expected_log)
    assert extractor.log_columns.dtype == np.bool_
    assert np.all(feats[:, extractor.log_columns] >= 0)
    assert np.all(np.isfinite(feats))


def test_gradient_columns_equal_the_probe_for_each_loss(
    extractor: FeatureExtractor, batch: torch.Tensor, digits_model: nn.Module
) -> None:
    feats = extractor.extract(batch).features
    index = _index(extractor)
    blocks = []
    for loss in LOSSES:
        probe = GradientProbe(digits_model, loss=loss)
        _, expected = probe.features(batch)
        cols = [index[f"grad/{loss}/{p}"] for p in probe.feature_names]
        np.testing.assert_allclose(feats[:, cols], expected.double().numpy(), rtol=1e-5)
        assert np.all(expected.numpy() > 0)  # a column of zeros would pass trivially
        blocks.append(feats[:, cols])
    assert not np.allclose(*blocks)  # the two losses are not copies of each other


def test_logit_statistics_follow_their_formulas(
    extractor: FeatureExtractor, batch: torch.Tensor, digits_model: nn.Module
) -> None:
    out = extractor.extract(batch)
    with torch.no_grad():
        reference = digits_model(batch).numpy()
    np.testing.assert_allclose(out.logits, reference, rtol=1e-5, atol=1e-5)
    z = out.logits.astype(np.float64)
    p = softmax(z, axis=1)
    top2 = np.sort(z, axis=1)[:, -2:]
    expected = {
        "msp": p.max(1),
        "margin": top2[:, 1] - top2[:, 0],
        "entropy": entropy(p, axis=1),
        "energy": -logsumexp(z, axis=1),
        "max_logit": z.max(1),
    }
    assert set(expected) == set(LOGIT_STATS)
    index = _index(extractor)
    for stat, values in expected.items():
        np.testing.assert_allclose(
            out.features[:, index[f"logit/{stat}"]], values, rtol=1e-9, atol=1e-12
        )


def test_head_mahalanobis_equals_the_baseline(
    extractor: FeatureExtractor,
    batch: torch.Tensor,
    digits_model: nn.Module,
    stats_split: tuple[np.ndarray, np.ndarray],
) -> None:
    column = _index(extractor)[f"activation/{HEAD}/mahalanobis"]
    got = extractor.extract(batch).features[:, column]
    baseline = Mahalanobis().fit(digits_model, *stats_split)
    expected = baseline.score(digits_model, batch.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.ptp(expected) > 0


def test_every_activation_column_is_a_closest_class_distance(
    extractor: FeatureExtractor,
    batch: torch.Tensor,
    digits_model: nn.Module,
    stats_split: tuple[np.ndarray, np.ndarray],
) -> None:
    feats = extractor.extract(batch).features
    layers = [extractor.schema[i]["name"].split("/")[1] for i in _group(extractor, "activation")]
    assert any(isinstance(digits_model.get_submodule(n), nn.Conv2d) for n in layers)
    for layer, col in zip(layers, _group(extractor, "activation"), strict=True):
        fit = _layer_inputs(digits_model, layer, stats_split[0])
        x = _layer_inputs(digits_model, layer, batch.numpy())
        expected = _distances(fit, stats_split[1], x).min(1)
        np.testing.assert_allclose(feats[:, col], expected, rtol=1e-4, err_msg=layer)


def test_novelty_is_the_distance_to_the_predicted_class(
    extractor: FeatureExtractor,
    batch: torch.Tensor,
    digits_model: nn.Module,
    stats_split: tuple[np.ndarray, np.ndarray],
) -> None:
    (col,) = _group(extractor, "novelty")
    grads = _group(extractor, "gradient")

    def log_grads_and_predictions(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = extractor.extract_images(images)
        return np.log(out.features[:, grads]), out.logits.argmax(1)

    fit, fit_pred = log_grads_and_predictions(stats_split[0])
    x, pred = log_grads_and_predictions(batch.numpy())
    classes = np.unique(fit_pred)
    assert set(pred) <= set(classes)
    expected = _distances(fit, fit_pred, x)[np.arange(len(x)), np.searchsorted(classes, pred)]
    np.testing.assert_allclose(extractor.extract(batch).features[:, col], expected, rtol=1e-4)


def test_json_round_trip_gives_identical_features(
    extractor: FeatureExtractor, batch: torch.Tensor, digits_model: nn.Module
) -> None:
    spec = json.loads(json.dumps(extractor.to_dict(), allow_nan=False))
    rebuilt = FeatureExtractor.from_dict(digits_model, spec)
    assert rebuilt.schema == extractor.schema
    assert rebuilt.to_dict() == spec
    # The same memory layout as the JSON gives back, so BLAS takes the same path: on
    # some thread counts a Fortran-ordered whitener summed in another order (1e-13 apart).
    assert extractor.layer_stats_ and extractor.novelty_stats_
    for g in [*extractor.layer_stats_.values(), extractor.novelty_stats_]:
        assert g.means.flags.c_contiguous and g.whitener.flags.c_contiguous
    np.testing.assert_array_equal(
        rebuilt.extract(batch).features, extractor.extract(batch).features
    )


def test_unfitted_parts_can_be_left_out(digits_model: nn.Module, batch: torch.Tensor) -> None:
    ext = FeatureExtractor(
        digits_model,
        losses=["all_ones"],
        logit_stats=["msp"],
        layers=(),
        novelty=False,
        params=["fc2.weight", "fc1.bias"],
    )
    # The probe orders parameters as the model does, not as asked; nothing needs fitting.
    assert [c["name"] for c in ext.schema] == [
        "grad/all_ones/fc1.bias",
        "grad/all_ones/fc2.weight",
        "logit/msp",
    ]
    spec = json.loads(json.dumps(ext.to_dict()))
    rebuilt = FeatureExtractor.from_dict(digits_model, spec)
    feats = rebuilt.extract(batch).features
    np.testing.assert_array_equal(feats, ext.extract(batch).features)
    assert feats.shape == (len(batch), 3)


def test_extract_images_is_independent_of_batching(
    extractor: FeatureExtractor, batch: torch.Tensor
) -> None:
    whole = extractor.extract(batch)
    chunked = extractor.extract_images(batch.numpy(), batch_size=5)
    np.testing.assert_allclose(chunked.features, whole.features, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(chunked.logits, whole.logits, rtol=1e-5, atol=1e-5)
    assert chunked.logits.dtype == np.float32
    assert chunked.features.dtype == np.float64


def test_unknown_logit_statistic_is_refused(digits_model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown logit statistic.*'median'"):
        FeatureExtractor(digits_model, logit_stats=["msp", "median"])


def test_unknown_or_missing_loss_is_refused(digits_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="at least one confounding loss"):
        FeatureExtractor(digits_model, losses=[])
    # Refused when built, not later when the first batch arrives.
    with pytest.raises(ValueError, match=r"unknown confounding loss 'no_such_loss'"):
        FeatureExtractor(digits_model, losses=["all_ones", "no_such_loss"])


def test_unfitted_statistics_are_refused(digits_model: nn.Module, batch: torch.Tensor) -> None:
    ext = FeatureExtractor(digits_model)
    with pytest.raises(ValueError, match="not fitted"):
        ext.extract(batch)
    with pytest.raises(ValueError, match="not fitted"):
        ext.to_dict()
    only_novelty = FeatureExtractor(digits_model, layers=(), novelty=True)
    with pytest.raises(ValueError, match="not fitted"):
        only_novelty.extract(batch)


def _broken(spec: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``path`` set to ``value`` (deleted when value is ...)."""
    out = json.loads(json.dumps(spec))
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


HEAD = "fc2"  # the digits model's last Linear

MALFORMED = [
    (("losses",), ..., "malformed feature spec"),
    (("layers",), ..., "malformed feature spec"),
    (("novelty",), ..., "malformed feature spec"),
    (("layers", HEAD, "means"), ..., "malformed feature spec"),
    (("logit_stats",), 7, "malformed feature spec"),
    (("logit_stats",), ["msp", "median"], "unknown logit statistic"),
    (("losses",), ["bogus"], "unknown confounding loss"),
    (("layers", HEAD, "means"), [[0.0, 1.0]], "means"),
    (("layers", HEAD, "whitener"), [[1.0]], "whitener"),
    (("layers", HEAD, "means"), "not numbers", "means"),
    (("novelty", "means"), [[0.0, 1.0]], "means"),
    (("novelty", "whitener"), [[1.0, float("nan")]], "whitener"),
]


@pytest.mark.parametrize(("path", "value", "message"), MALFORMED)
def test_malformed_spec_is_refused_when_loaded(
    extractor: FeatureExtractor,
    digits_model: nn.Module,
    path: tuple[str, ...],
    value: object,
    message: str,
) -> None:
    spec = extractor.to_dict()
    assert HEAD in spec["layers"]
    with pytest.raises(ValueError, match=message):
        FeatureExtractor.from_dict(digits_model, _broken(spec, path, value))


def test_spec_that_is_not_an_object_is_refused(digits_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="malformed feature spec"):
        FeatureExtractor.from_dict(digits_model, ["losses"])  # type: ignore[arg-type]


def test_spec_naming_a_missing_layer_is_refused(
    extractor: FeatureExtractor, digits_model: nn.Module
) -> None:
    spec = extractor.to_dict()
    spec["layers"]["no.such.layer"] = spec["layers"][HEAD]
    with pytest.raises(ValueError, match=r"'no\.such\.layer' is not a submodule"):
        FeatureExtractor.from_dict(digits_model, spec)


def test_gaussians_of_a_subset_of_classes() -> None:
    """Statistics that saw only some classes (a 1,000-class model, a few photos): a seen
    class is measured to its own mean, an unseen one to the closest; ids survive JSON."""
    import numpy as np

    from detectors.features import Gaussians

    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (20, 3)), rng.normal(5, 1, (20, 3))])
    g = Gaussians.fit(feats, np.array([3] * 20 + [7] * 20))
    again = Gaussians.from_dict(g.to_dict(), "test", width=3)
    x = np.array([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    for model in (g, again):
        d = model.to_class(x, np.array([7, 3, 999]))
        assert d[0] < d[1]  # class 7's mean is near (5, 5, 5), class 3's far
        assert d[2] == model.closest(x[2:])[0]  # never-seen class 999: the closest mean
