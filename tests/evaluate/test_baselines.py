"""Baselines on the real digits CNN: contract, references, detection of noise images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.exceptions import NotFittedError
from torch import nn

from detectors.demo.model import MnistCNN
from detectors.evaluate.baselines import (
    Baseline,
    GradNorm,
    Mahalanobis,
    Odin,
    available,
    create,
    get,
    register,
)
from detectors.evaluate.metrics import detection_metrics

EXPECTED = {"energy", "gradnorm", "mahalanobis", "msp", "odin"}


@pytest.fixture(scope="module")
def data(digits: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Fit split (300 digits), clean test split (64), and two noise sets (64 each).

    "dim" noise is uniform in [0, 0.2]; "bright" noise uniform in [0, 1]. The digits
    CNN classifies bright noise as a "4" with ~100% confidence (ReLU networks are
    overconfident far from the data), so only the feature-space score sees it.
    """
    images, labels = digits
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    fit, test = order[:300], order[300:364]
    shape = (64, *images.shape[1:])
    return {
        "fit_x": images[fit],
        "fit_y": labels[fit],
        "clean": images[test],
        "dim_noise": rng.uniform(0.0, 0.2, shape).astype(np.float32),
        "bright_noise": rng.uniform(0.0, 1.0, shape).astype(np.float32),
    }


@pytest.fixture(scope="module")
def fitted(digits_model: MnistCNN, data: dict[str, np.ndarray]) -> dict[str, Baseline]:
    return {
        name: create(name).fit(digits_model, data["fit_x"], data["fit_y"], batch_size=128)
        for name in available()
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- registry -------------------------------------------------------------------------


def test_registry_lists_every_baseline() -> None:
    assert set(available()) == EXPECTED
    for name in available():
        assert get(name).name == name
        assert isinstance(create(name), Baseline)


def test_registry_errors() -> None:
    with pytest.raises(KeyError, match="unknown baseline 'nope'"):
        get("nope")

    class Duplicate(Baseline):
        def score(self, model, images, *, batch_size=256):  # type: ignore[no-untyped-def]
            return np.zeros(len(images))

    with pytest.raises(ValueError, match="already registered"):
        register("msp")(Duplicate)
    with pytest.raises(TypeError, match="Baseline subclasses"):
        register("not_a_baseline")(int)  # type: ignore[arg-type]
    assert set(available()) == EXPECTED


# --- the contract, for every registered baseline ---------------------------------------


@pytest.mark.parametrize("name", available())
def test_contract(
    name: str, digits_model: MnistCNN, data: dict[str, np.ndarray], fitted: dict[str, Baseline]
) -> None:
    baseline = fitted[name]
    before = _state(digits_model)
    flags = [p.requires_grad for p in digits_model.parameters()]

    scores = baseline.score(digits_model, data["clean"], batch_size=64)
    small_batches = baseline.score(digits_model, data["clean"][:20], batch_size=3)

    assert scores.shape == (64,) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    assert np.ptp(scores) > 0  # a real score, not a constant
    # Per-sample: the batch an image is scored in does not matter.
    np.testing.assert_allclose(small_batches, scores[:20], rtol=1e-5, atol=1e-7)
    # The model is left exactly as it was.
    assert not digits_model.training
    assert all(p.grad is None for p in digits_model.parameters())
    assert [p.requires_grad for p in digits_model.parameters()] == flags
    after = _state(digits_model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", available())
def test_detects_dim_noise(
    name: str, digits_model: MnistCNN, data: dict[str, np.ndarray], fitted: dict[str, Baseline]
) -> None:
    clean = fitted[name].score(digits_model, data["clean"])
    noise = fitted[name].score(digits_model, data["dim_noise"])
    assert detection_metrics(clean, noise).auroc > 0.9


@pytest.mark.parametrize("name", available())
def test_refuses_a_model_in_training_mode(
    name: str, digits_model: MnistCNN, data: dict[str, np.ndarray], fitted: dict[str, Baseline]
) -> None:
    model = copy.deepcopy(digits_model).train()
    with pytest.raises(ValueError, match="training mode"):
        fitted[name].score(model, data["clean"][:4])
    with pytest.raises(ValueError, match="training mode"):
        create(name).fit(model, data["fit_x"][:4], data["fit_y"][:4])
    assert model.training  # not silently switched
    model.eval().fc1.train()  # one submodule left in training mode is refused too
    with pytest.raises(ValueError, match=r"training mode \(fc1\)"):
        fitted[name].score(model, data["clean"][:4])


@pytest.mark.parametrize("name", available())
def test_input_validation(
    name: str, digits_model: MnistCNN, data: dict[str, np.ndarray], fitted: dict[str, Baseline]
) -> None:
    baseline, x, y = fitted[name], data["clean"][:4], data["fit_y"][:4]
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        baseline.score(digits_model, x[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        baseline.score(digits_model, np.where(x > 0.5, np.nan, x).astype(np.float32))
    with pytest.raises(ValueError, match="empty"):
        baseline.score(digits_model, x[:0])
    with pytest.raises(ValueError, match="floating"):
        baseline.score(digits_model, (x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        baseline.score(digits_model, x, batch_size=0)
    with pytest.raises(TypeError, match="numpy array"):
        baseline.score(digits_model, torch.from_numpy(x))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels must have shape"):
        create(name).fit(digits_model, x, y[:3])
    with pytest.raises(ValueError, match="integers"):
        create(name).fit(digits_model, x, y.astype(np.float32))


# --- each baseline against an independent reference -------------------------------------


def _logits(model: nn.Module, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(images)).double()


def test_msp_and_energy_formulas(digits_model: MnistCNN, data: dict[str, np.ndarray]) -> None:
    x = data["clean"][:16]
    z = _logits(digits_model, x)
    msp = create("msp").score(digits_model, x)
    np.testing.assert_allclose(msp, -torch.softmax(z, 1).max(1).values.numpy(), rtol=1e-6)
    energy = create("energy").score(digits_model, x)
    np.testing.assert_allclose(energy, -torch.logsumexp(z, 1).numpy(), rtol=1e-6)
    tempered = create("energy", temperature=2.0).score(digits_model, x)
    np.testing.assert_allclose(tempered, -2.0 * torch.logsumexp(z / 2.0, 1).numpy(), rtol=1e-6)


def _odin_reference(model: nn.Module, images: np.ndarray, t: float, eps: float) -> np.ndarray:
    """One image at a time: x̃ = x − ε·sign(∇ₓ[−log max softmax(f(x)/T)])."""
    out = []
    for image in images:
        x = torch.from_numpy(image[None]).requires_grad_(True)
        loss = -torch.log_softmax(model(x)[0] / t, dim=0).max()
        (grad,) = torch.autograd.grad(loss, x)
        x_tilde = x.detach() - eps * grad.sign()
        with torch.no_grad():
            out.append(-torch.softmax(model(x_tilde)[0].double() / t, dim=0).max().item())
    return np.array(out)


@pytest.mark.parametrize(("t", "eps", "atol"), [(1000.0, 0.0014, 1e-8), (1.0, 0.01, 1e-6)])
def test_odin_matches_per_sample_reference(
    digits_model: MnistCNN, data: dict[str, np.ndarray], t: float, eps: float, atol: float
) -> None:
    x = np.concatenate([data["clean"][:6], data["dim_noise"][:6]])
    scores = Odin(temperature=t, epsilon=eps).score(digits_model, x, batch_size=5)
    reference = _odin_reference(digits_model, x, t, eps)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=atol)
    # The preprocessing step moves scores far more than the tolerance (the check can fail).
    no_step = Odin(temperature=t, epsilon=0.0).score(digits_model, x)
    assert np.abs(no_step - reference).max() > 100 * atol
    assert all(p.grad is None for p in digits_model.parameters())


def test_odin_inside_inference_mode(digits_model: MnistCNN, data: dict[str, np.ndarray]) -> None:
    x = data["clean"][:4]
    expected = Odin().score(digits_model, x)
    with torch.inference_mode():
        np.testing.assert_allclose(Odin().score(digits_model, x), expected, rtol=1e-7)
    with torch.no_grad():
        np.testing.assert_allclose(Odin().score(digits_model, x), expected, rtol=1e-7)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_gradnorm_matches_autograd(
    digits_model: MnistCNN, data: dict[str, np.ndarray], t: float
) -> None:
    x = np.concatenate([data["clean"][:5], data["dim_noise"][:5]])
    scores = GradNorm(temperature=t).score(digits_model, x, batch_size=4)
    reference = []
    for image in x:
        z = digits_model(torch.from_numpy(image[None]))
        uniform = torch.full_like(z, 1.0 / z.shape[1])
        # KL(uniform ‖ softmax(z/T)); kl_div takes log-probabilities first.
        loss = F.kl_div(F.log_softmax(z / t, dim=1), uniform, reduction="sum")
        (grad,) = torch.autograd.grad(loss, digits_model.fc2.weight)
        reference.append(-grad.abs().sum().item())
    np.testing.assert_allclose(scores, reference, rtol=1e-5)
    assert all(p.grad is None for p in digits_model.parameters())


def test_mahalanobis_matches_direct_computation(
    digits_model: MnistCNN, data: dict[str, np.ndarray], fitted: dict[str, Baseline]
) -> None:
    def penultimate(images: np.ndarray) -> np.ndarray:
        m = digits_model
        with torch.no_grad():
            h = m.features((torch.from_numpy(images) - m.mean) / m.std).flatten(1)
            return torch.relu(m.fc1(h)).double().numpy()

    fx, fy = penultimate(data["fit_x"]), data["fit_y"]
    classes = np.unique(fy)
    means = np.stack([fx[fy == c].mean(0) for c in classes])
    centred = fx - means[np.searchsorted(classes, fy)]
    cov = centred.T @ centred / len(fx)
    precision = np.linalg.pinv(cov, rtol=cov.shape[0] * np.finfo(float).eps, hermitian=True)

    x = np.concatenate([data["clean"][:8], data["bright_noise"][:8]])
    diff = penultimate(x)[:, None, :] - means[None]
    reference = np.sqrt(np.einsum("nkd,de,nke->nk", diff, precision, diff).min(1))
    np.testing.assert_allclose(fitted["mahalanobis"].score(digits_model, x), reference, rtol=1e-4)


def test_mahalanobis_catches_confident_noise(
    digits_model: MnistCNN, data: dict[str, np.ndarray], fitted: dict[str, Baseline]
) -> None:
    # Bright noise is classified with near-certainty, so output-based scores call it
    # *more* in-distribution than real digits; the feature-space distance does not.
    clean = fitted["mahalanobis"].score(digits_model, data["clean"])
    noise = fitted["mahalanobis"].score(digits_model, data["bright_noise"])
    assert detection_metrics(clean, noise).auroc > 0.95
    msp_clean = fitted["msp"].score(digits_model, data["clean"])
    msp_noise = fitted["msp"].score(digits_model, data["bright_noise"])
    assert detection_metrics(msp_clean, msp_noise).auroc < 0.6


def test_mahalanobis_fit_errors(digits_model: MnistCNN, data: dict[str, np.ndarray]) -> None:
    with pytest.raises(NotFittedError, match="call fit"):
        Mahalanobis().score(digits_model, data["clean"][:2])
    with pytest.raises(ValueError, match="at least 2"):
        Mahalanobis().fit(digits_model, data["fit_x"][:1], data["fit_y"][:1])
    with pytest.raises(ValueError, match="rcond"):
        Mahalanobis(rcond=2.0).fit(digits_model, data["fit_x"][:8], data["fit_y"][:8])


class _ConvOnly(nn.Module):
    """Logits from a convolution alone: no nn.Linear anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


class _Scaled(nn.Module):
    """Logits = 2 × the wrapped model's: the last Linear no longer outputs the logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.inner(x)


def test_head_based_baselines_need_a_linear_head(
    digits_model: MnistCNN, data: dict[str, np.ndarray]
) -> None:
    x, y = data["fit_x"][:8], data["fit_y"][:8]
    conv_only = _ConvOnly().eval()
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        Mahalanobis().fit(conv_only, x, y)
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        GradNorm().score(conv_only, x)
    assert create("msp").score(conv_only, x).shape == (8,)  # output-only scores still work

    scaled = _Scaled(copy.deepcopy(digits_model)).eval()
    with pytest.raises(ValueError, match=r"output of its last nn\.Linear"):
        GradNorm().score(scaled, x)


def test_invalid_hyperparameters(digits_model: MnistCNN, data: dict[str, np.ndarray]) -> None:
    x = data["clean"][:2]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        create("energy", temperature=0.0).score(digits_model, x)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        Odin(epsilon=-0.1).score(digits_model, x)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        GradNorm(temperature=float("nan")).score(digits_model, x)
