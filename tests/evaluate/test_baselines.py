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
    KNN,
    Baseline,
    GradNorm,
    Mahalanobis,
    Odin,
    ViM,
    available,
    create,
    get,
    register,
)
from detectors.evaluate.baselines.knn import default_k
from detectors.evaluate.baselines.vim import head_features
from detectors.evaluate.metrics import detection_metrics

EXPECTED = {"energy", "gradnorm", "knn", "mahalanobis", "msp", "odin", "vim"}


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
    # Per-sample: the batch an image is scored in does not matter. float32 convolutions
    # round differently per batch size (~1e-6 relative); scores that are differences of
    # large terms (ViM: virtual logit − logsumexp) keep that error relative to the terms,
    # hence an absolute part scaled by the largest score.
    atol = 1e-5 * float(np.abs(scores).max())
    np.testing.assert_allclose(small_batches, scores[:20], rtol=1e-5, atol=atol)
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
    # The digits model trains on a fixed thread count (tests/conftest.py), so these
    # weights are the same in every run: every baseline scores ≥ 0.95 on them (ViM 0.952,
    # the lowest), and 0.9 leaves room for other BLAS builds.
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
    for feature_space in (KNN(k=2), ViM()):
        with pytest.raises(ValueError, match=r"no nn\.Linear"):
            feature_space.fit(conv_only, x, y)
    assert create("msp").score(conv_only, x).shape == (8,)  # output-only scores still work

    scaled = _Scaled(copy.deepcopy(digits_model)).eval()
    with pytest.raises(ValueError, match=r"output of its last nn\.Linear"):
        GradNorm().score(scaled, x)
    with pytest.raises(ValueError, match=r"output of its last nn\.Linear"):
        ViM().fit(scaled, x, y)


def test_invalid_hyperparameters(digits_model: MnistCNN, data: dict[str, np.ndarray]) -> None:
    x = data["clean"][:2]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        create("energy", temperature=0.0).score(digits_model, x)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        Odin(epsilon=-0.1).score(digits_model, x)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        GradNorm(temperature=float("nan")).score(digits_model, x)


# --- KNN and ViM on hand-checkable features ---------------------------------------------


def _linear_probe(weight: list[list[float]], bias: list[float]) -> nn.Module:
    """A model whose penultimate features are its input: Flatten then one Linear."""
    head = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight))
        head.bias.copy_(torch.tensor(bias))
    return nn.Sequential(nn.Flatten(), head).eval()


def _points(rows: list[list[float]]) -> np.ndarray:
    """Feature vectors [N, D] as images [N, 1, 1, D]."""
    return np.array(rows, dtype=np.float32)[:, None, None, :]


def test_knn_on_points_of_the_unit_circle() -> None:
    # Fit features at 0°, 90°, 180° and 270° with different lengths: normalisation puts
    # them on the unit circle. A query at 45° is 2·sin(22.5°) from its two nearest
    # neighbours and 2·sin(67.5°) from the other two; one at 0° is 0, √2, √2, 2 away.
    model = _linear_probe([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, 0.0])
    fit = _points([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -0.5]])
    labels = np.zeros(4, dtype=np.int64)
    query = _points([[2.0, 2.0], [5.0, 0.0]])
    near, far = 2 * np.sin(np.pi / 8), 2 * np.sin(3 * np.pi / 8)
    expected = {
        1: [near, 0.0],
        2: [near, np.sqrt(2)],
        3: [far, np.sqrt(2)],
        4: [far, 2.0],
    }
    for k, want in expected.items():
        got = KNN(k=k).fit(model, fit, labels).score(model, query)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # float32 features


def test_knn_k_follows_the_paper_and_is_checked(
    digits_model: MnistCNN, data: dict[str, np.ndarray]
) -> None:
    # k = 50 on CIFAR-10's 50,000 training images, in proportion below and above.
    assert [default_k(n) for n in (300, 6000, 50_000, 1_281_167)] == [1, 6, 50, 1281]
    assert KNN().fit(digits_model, data["fit_x"], data["fit_y"]).k_ == 1
    with pytest.raises(ValueError, match="at least 50 fit images"):
        KNN(k=50).fit(digits_model, data["fit_x"][:10], data["fit_y"][:10])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        KNN(k=0).fit(digits_model, data["fit_x"][:10], data["fit_y"][:10])
    with pytest.raises(NotFittedError, match="call fit"):
        KNN().score(digits_model, data["clean"][:2])


def test_vim_on_a_hand_checkable_subspace() -> None:
    # W = [[1,0,0],[0,1,0]], b = (1,-2): the origin o = -W⁺b = (-1, 2, 0), and the logits
    # of o + v are (v₁, v₂). The centred fit features (±3,0,+.5), (0,±3,-.5) have an
    # axis-aligned covariance diag(4.5, 4.5, .25): with d = 2 the residual is the third
    # axis, every residual norm is .5, the max logits are 3, 0, 3, 0, so α = 1.5/.5 = 3.
    # A query o + (1, 0, 2) scores 3·2 − log(e¹ + e⁰); o itself scores 0 − log 2.
    model = _linear_probe([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [1.0, -2.0])
    origin = np.array([-1.0, 2.0, 0.0])
    centred = [[3, 0, 0.5], [-3, 0, 0.5], [0, 3, -0.5], [0, -3, -0.5]]
    fit = _points((origin + np.array(centred)).tolist())
    vim = ViM(dim=2).fit(model, fit, np.zeros(4, dtype=np.int64))
    np.testing.assert_allclose(vim.origin_, origin, atol=1e-6)
    assert vim.alpha_ == pytest.approx(3.0, rel=1e-6)
    query = _points([(origin + np.array([1.0, 0.0, 2.0])).tolist(), origin.tolist()])
    np.testing.assert_allclose(
        vim.score(model, query), [6.0 - np.log(np.e + 1.0), -np.log(2.0)], rtol=0, atol=1e-5
    )


def test_vim_puts_the_whole_null_space_in_the_residual() -> None:
    # Five features, two of them never active on the fit images (dead units). The centred
    # fit features (±3,0,.5,0,0), (0,±2,−.5,0,0) have covariance diag(4.5, 2, .25, 0, 0):
    # rank 3, so the rule's d = 3 // 2 = 1 and R spans axes 2–5, null space included.
    # Residual norms .5, .5, √4.25, √4.25; max logits 3, 0, 2, 0: α = 1.25 / mean norm.
    # A query that activates a dead unit, o + (0,0,0,1,0), scores α·1 − log 2.
    model = _linear_probe([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]], [1.0, -2.0])
    origin = np.array([-1.0, 2.0, 0.0, 0.0, 0.0])
    centred = [[3, 0, 0.5, 0, 0], [-3, 0, 0.5, 0, 0], [0, 2, -0.5, 0, 0], [0, -2, -0.5, 0, 0]]
    fit = _points((origin + np.array(centred)).tolist())
    labels = np.zeros(4, dtype=np.int64)
    vim = ViM().fit(model, fit, labels)
    assert vim.residual_.shape == (5, 4)
    alpha = 1.25 / np.mean([0.5, 0.5, np.sqrt(4.25), np.sqrt(4.25)])
    assert vim.alpha_ == pytest.approx(alpha, rel=1e-6)
    query = _points([(origin + np.array([0.0, 0.0, 0.0, 1.0, 0.0])).tolist()])
    np.testing.assert_allclose(vim.score(model, query), [alpha - np.log(2.0)], atol=1e-5)
    # d = 3 would leave only the null space, with no clean residual to scale α by.
    with pytest.raises(ValueError, match=r"span 3 of their 5 dimensions: dim must be in \[1, 2\]"):
        ViM(dim=3).fit(model, fit, labels)


def test_vim_principal_dimension(digits_model: MnistCNN, data: dict[str, np.ndarray]) -> None:
    # The reference code's rule, applied to the rank of the clean penultimate features.
    assert [ViM.default_dim(d) for d in (128, 512, 768, 2048)] == [64, 256, 512, 1000]
    fitted = ViM().fit(digits_model, data["fit_x"], data["fit_y"])
    feats = head_features(digits_model, data["fit_x"], 256)[0] - fitted.origin_
    rank = np.linalg.matrix_rank(feats.T @ feats, tol=1e-12 * np.linalg.norm(feats, 2) ** 2)
    assert fitted.residual_.shape == (128, 128 - rank // 2)
    with pytest.raises(ValueError, match=r"dim must be an integer in \[1, 127\]"):
        ViM(dim=128).fit(digits_model, data["fit_x"], data["fit_y"])
    with pytest.raises(NotFittedError, match="call fit"):
        ViM().score(digits_model, data["clean"][:2])
