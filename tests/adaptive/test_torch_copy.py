"""The attacker's torch copies compute exactly what the product computes.

- ``OnnxHead`` / ``TorchDetector`` against onnxruntime on the same features (the
  committed bundle on real inputs; fresh logistic and MLP heads of every strategy);
- ``TorchFeatures`` against ``FeatureExtractor.extract`` (the probe), in two batch
  compositions, and its input gradient against an independent per-sample gradient
  (``torch.func``);
- every registered attack target's margin against its reference scorer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from detectors.adaptive.detector import COMBINE, TorchDetector
from detectors.adaptive.features import TorchFeatures
from detectors.adaptive.onnx_torch import OnnxHead, UnsupportedOnnxError
from detectors.adaptive.targets import available_targets, create_target
from detectors.detector import ReliabilityDetector
from detectors.detector.export import to_onnx, to_onnx_detector
from detectors.detector.strategies import STRATEGIES, get_strategy
from detectors.losses import get_loss
from tests.adaptive.conftest import real_inputs
from tests.detector.synthetic import LOG_COLUMNS, make_features

# Probabilities: onnxruntime and torch evaluate the same float64 ops on the same constants;
# only the summation order of the [N, F] @ [F, C] products differs (MLAS vs torch's BLAS,
# any thread count): a few ulps of raw scores of magnitude ≤ ~100, i.e. ~1e-13 after the
# sigmoid. 1e-10 leaves three orders of margin and still catches any wrong constant or op.
PROBA_ATOL = 1e-10


@pytest.fixture(scope="module")
def demo_inputs(sample_digits, demo_sentry) -> np.ndarray:
    return real_inputs(sample_digits, demo_sentry.extractor.model)


@pytest.fixture(scope="module")
def demo_features(demo_sentry, demo_inputs) -> np.ndarray:
    return demo_sentry.extractor.extract(torch.from_numpy(demo_inputs)).features


def test_every_head_of_the_demo_bundle_matches_onnxruntime(demo_sentry, demo_features) -> None:
    det = demo_sentry.detector
    xt = det.transform_.transform(demo_features)
    reference = det._head_probas(xt)
    bundle = demo_sentry.bundle
    for name, entry in bundle.manifest["heads"].items():
        data = (bundle.path / entry["file"]).read_bytes()
        copy = OnnxHead(data, name)(torch.from_numpy(xt)).numpy()
        np.testing.assert_allclose(copy, reference[name], rtol=0, atol=PROBA_ATOL, err_msg=name)


def test_torch_h_gives_the_served_score_and_flags(demo_sentry, demo_features) -> None:
    ref = demo_sentry.detector.scores(demo_features)
    assert 0 < ref.flagged.mean() < 1  # the inputs span both sides of the threshold
    copy = TorchDetector.from_bundle(demo_sentry.bundle)
    p, log_odds = copy(torch.from_numpy(demo_features))
    np.testing.assert_allclose(p.numpy(), ref.probability, rtol=0, atol=PROBA_ATOL)
    np.testing.assert_array_equal((log_odds >= copy.logit_threshold).numpy(), ref.flagged)
    # Log-odds against logit(P) where P is not saturated (there 1 − P keeps its digits):
    # relative 1e-6 covers the 1e-10 of P divided by P(1 − P) ≥ 1e-4.
    ok = (ref.probability > 1e-4) & (ref.probability < 1 - 1e-4)
    assert ok.sum() >= 10
    expect = np.log(ref.probability[ok]) - np.log1p(-ref.probability[ok])
    np.testing.assert_allclose(log_odds.numpy()[ok], expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("classifier", ["logistic", "mlp"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_fresh_heads_of_every_strategy_match_onnxruntime(classifier: str, strategy: str) -> None:
    rng = np.random.default_rng(0)
    counts = {"clean": 420, "adversarial": 120, "ood": 120, "corrupted": 120}
    X, kinds = make_features(rng, counts)
    det = ReliabilityDetector(classifier, strategy, log_columns=LOG_COLUMNS).fit(X, kinds)
    X_test, _ = make_features(np.random.default_rng(1), counts)
    ref = to_onnx_detector(det).scores(X_test).probability
    copy = TorchDetector(to_onnx(det), det.transform_, strategy, det.kinds_, det.threshold_)
    p, _ = copy(torch.from_numpy(X_test))
    np.testing.assert_allclose(p.numpy(), ref, rtol=0, atol=PROBA_ATOL)


def test_a_tree_head_is_refused_by_name() -> None:
    X, kinds = make_features(np.random.default_rng(0), {"clean": 420, "ood": 200})
    det = ReliabilityDetector("gbm", "binary", log_columns=LOG_COLUMNS).fit(X, kinds)
    with pytest.raises(UnsupportedOnnxError, match="TreeEnsemble"):
        TorchDetector(to_onnx(det), det.transform_, "binary", det.kinds_, det.threshold_)


def test_every_strategy_has_a_torch_twin_that_agrees() -> None:
    kinds = ("adversarial", "ood", "corrupted")
    rng = np.random.default_rng(0)
    for name in STRATEGIES:
        assert name in COMBINE, f"strategy {name!r} has no torch twin in COMBINE"
        strategy = get_strategy(name)
        probas = {}
        for head in strategy.head_names(kinds):
            raw = rng.random((50, strategy.n_classes(head, kinds))) + 1e-3
            probas[head] = raw / raw.sum(1, keepdims=True)
        expect, _ = strategy.combine(probas, kinds)
        p, log_odds = COMBINE[name]({k: torch.from_numpy(v) for k, v in probas.items()}, kinds)
        np.testing.assert_allclose(p.numpy(), expect, rtol=0, atol=1e-15)
        np.testing.assert_allclose(log_odds.numpy(), np.log(expect / (1 - expect)), rtol=1e-9)


# Features: the copy runs the probe's own rules on the same float32 tensors; measured
# bit-identical gradient columns and ~1e-15 on the float64 distance columns. Batched
# float32 kernels may sum in another order for another batch size or thread count, so
# 1e-4 relative (float32 carries 6-7 digits; the norms are products and sums of hundreds
# of terms) is the bound that holds everywhere and still catches any wrong column.
FEATURE_RTOL = 1e-4
#: The same bound as the library's view test (tests/library/test_views.py says why).
SHIFT_ATOL = 1e-5


def test_torch_features_match_the_probe_in_any_batch(demo_sentry, demo_inputs) -> None:
    copy = TorchFeatures(demo_sentry.extractor)
    x = torch.from_numpy(demo_inputs)
    ref = demo_sentry.extractor.extract(x)
    for chunk in (len(x), 7):
        parts = [copy(x[i : i + chunk]) for i in range(0, len(x), chunk)]
        logits = torch.cat([p[0] for p in parts]).detach().numpy()
        feats = torch.cat([p[1] for p in parts]).detach().numpy()
        np.testing.assert_allclose(logits, ref.logits, rtol=FEATURE_RTOL, atol=1e-5)
        view = [c["group"] == "view" for c in demo_sentry.extractor.schema]
        assert any(view)  # the committed bundle has the median view
        np.testing.assert_allclose(
            feats[:, ~np.array(view)],
            ref.features[:, ~np.array(view)],
            rtol=FEATURE_RTOL,
            atol=1e-30,
        )
        # A view's shift is a difference of two probability vectors: its float32 rounding
        # (~1e-7 per probability, another batch size) is absolute, not relative.
        np.testing.assert_allclose(feats[:, view], ref.features[:, view], rtol=0, atol=SHIFT_ATOL)


def test_feature_gradients_match_an_independent_per_sample_gradient(demo_sentry) -> None:
    # d/dx Σ log(grad norms), double backward through the probe's rules, against the same
    # through torch.func's per-sample gradients (vmap of grad: no rule involved).
    ext = demo_sentry.extractor
    model = ext.model
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    n_grad = len(ext.losses) * ext.probe.num_features
    xa = x.clone().requires_grad_(True)
    (gx_copy,) = torch.autograd.grad(TorchFeatures(ext)(xa)[1][:, :n_grad].log().sum(), xa)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    xb = x.clone().requires_grad_(True)
    cols = []
    for loss in ext.losses:
        fn = get_loss(loss)

        def one(p, xi, fn=fn):
            return fn(functional_call(model, (p, buffers), (xi[None],)))[0]

        g = vmap(grad(one), in_dims=(None, 0))(params, xb)
        cols += [g[n].square().flatten(1).sum(1) for n in ext.probe.feature_names]
    (gx_ref,) = torch.autograd.grad(torch.stack(cols, 1).double().log().sum(), xb)
    # Two float32 routes to a second derivative: agreement to 1e-3 of the gradient's scale.
    scale = gx_ref.abs().max()
    assert scale > 0
    assert ((gx_copy - gx_ref).abs().max() / scale) < 1e-3


@pytest.mark.parametrize("name", available_targets())
def test_every_target_copy_gives_its_reference_margin(name, sample_setup, demo_inputs) -> None:
    target = create_target(name).prepare(sample_setup, target_fpr=0.05)
    reference = target.margin_of(target.score(demo_inputs))
    _, margin = target.forward(torch.from_numpy(demo_inputs))
    margin = margin.detach().numpy()
    np.testing.assert_array_equal(margin >= 0, reference >= 0)
    # Margins are log-ratios: the copies agree to float32 feature rounding (1e-4 relative
    # features move a log by 1e-4); where P saturates (log-odds beyond ±20) the reference's
    # logit(P) loses digits, so compare there only that both say flagged.
    ok = np.abs(reference) < 20
    assert ok.sum() >= 20
    np.testing.assert_allclose(margin[ok], reference[ok], rtol=0, atol=1e-3)
    x = torch.from_numpy(demo_inputs[:4]).requires_grad_(True)
    (g,) = torch.autograd.grad(target.forward(x)[1].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
