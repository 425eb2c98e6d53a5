"""The feature vector H reads: confounding-gradient norms plus output statistics.

For an input batch x [B, ...] one probe pass gives
- per-parameter squared gradient norms for each confounding loss (the method's core:
  ``all_ones`` by default, optionally more targets, e.g. ``predicted``), and
- statistics of the same forward pass's output (max softmax, logit margin, entropy,
  energy, max logit),
- when fitted on clean labelled data: the Mahalanobis distance to the closest class
  mean of the activations entering a few layers (the head's input — the penultimate
  features — and earlier ones, pooled per channel to mean and max), and the
  "gradient novelty": the Mahalanobis distance of the log gradient-norm vector to the
  clean vectors of the predicted class — an unsupervised score that does not depend on
  which challenge kinds H was fitted on,
- optionally, for each view of the input (``detectors.views``: a 3×3 median filter, a
  stretch of the intensity range), how far the softmax moves on the view: one more
  forward pass per view.
Everything needed to recompute the vector is described by ``to_dict()`` (plain JSON),
which the detector bundle stores; ``schema`` names every column in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectors.gaussian import fit_tied_gaussian, min_class_distance
from detectors.losses import get_loss
from detectors.probe import GradientProbe
from detectors.views import check_views, view_shifts

# name -> logits [B, C] -> [B]
LOGIT_STATS: dict[str, Callable[[Tensor], Tensor]] = {
    "msp": lambda z: F.softmax(z, 1).amax(1),
    "margin": lambda z: (lambda t: t[:, 0] - t[:, 1])(z.topk(2, dim=1).values),
    "entropy": lambda z: -(F.softmax(z, 1) * F.log_softmax(z, 1)).sum(1),
    "energy": lambda z: -torch.logsumexp(z, 1),
    "max_logit": lambda z: z.amax(1),
}
DEFAULT_LOSSES: tuple[str, ...] = ("all_ones", "predicted")
DEFAULT_STATS: tuple[str, ...] = tuple(LOGIT_STATS)


def default_layers(model: nn.Module, most: int = 6) -> list[str]:
    """Layers whose input activations get a Mahalanobis feature: up to ``most`` Conv/Linear
    layers spread evenly after the first (which sees raw pixels), always the head."""
    names = [
        n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
    ]
    inner = names[1:]
    if len(inner) > most:
        inner = [inner[round(i * (len(inner) - 1) / (most - 1))] for i in range(most)]
    return inner


def pool(a: Tensor) -> Tensor:
    """Activations [B, C, *spatial] -> per-channel mean and max [B, 2C]; [B, D] unchanged."""
    if a.dim() <= 2:
        return a.reshape(a.shape[0], -1)
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    return torch.cat([flat.mean(2), flat.amax(2)], dim=1)


@dataclass(frozen=True)
class Extracted:
    """logits float32 [B, C]; features float64 [B, F]; timings: seconds per stage
    ("forward", "backward" = confounding backward + per-layer norms, "statistics")."""

    logits: np.ndarray
    features: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


# The largest magnitude a fitted mean or whitener entry may have. Distances square
# (activation - mean) @ whitener: with activations of a float32 model (< 3.4e38) and entries
# up to 1e100 they stay finite in float64 (< 1.8e308); real statistics are many orders
# smaller, so anything above is a damaged bundle, refused at load instead of turning every
# score into inf or NaN.
MAX_STATISTIC = 1e100


def pooled_width(module: nn.Module) -> int | None:
    """The width ``pool`` gives the input of ``module`` [B, 2C] when its structure says
    (convolutions and batch norms, whose input has spatial dimensions), else None."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return 2 * module.in_channels
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, nn.BatchNorm1d
    ):
        return 2 * module.num_features
    return None


@dataclass
class Gaussians:
    """Class means [K, D] and a whitening factor [D, r] of a tied covariance (JSON-able).

    classes: the class id of each row of ``means`` [K] (None: row k is class k). A model
    with more classes than its statistics data holds (ImageNet's 1,000 from a few photos)
    has rows only for the classes seen.
    """

    means: np.ndarray
    whitener: np.ndarray
    classes: np.ndarray | None = None

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray) -> Gaussians:
        classes, means, whitener = fit_tied_gaussian(feats, labels)
        return cls(means, whitener, classes)

    def closest(self, feats: np.ndarray) -> np.ndarray:
        """[N]: distance to the closest class mean."""
        return min_class_distance(feats, self.means, self.whitener)

    def to_class(self, feats: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """[N]: distance of row i to the mean of class ``classes[i]``; to the closest mean
        for a class the statistics never saw."""
        ids = np.arange(len(self.means)) if self.classes is None else self.classes
        rows = np.searchsorted(ids, classes).clip(0, len(ids) - 1)
        seen = ids[rows] == classes
        diff = (feats - self.means[rows]) @ self.whitener
        out = np.sqrt((diff**2).sum(1))
        if not seen.all():
            out[~seen] = self.closest(feats[~seen])
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"means": self.means.tolist(), "whitener": self.whitener.tolist()}
        if self.classes is not None and not np.array_equal(
            self.classes, np.arange(len(self.means))
        ):
            d["classes"] = self.classes.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str, width: int | None = None) -> Gaussians:
        """Rebuild from ``to_dict()``; ValueError unless means [K, D] and whitener [D, r] are
        finite, non-empty and agree on D (and D == ``width`` when given)."""
        arrays = []
        for name in ("means", "whitener"):
            try:
                arr = np.asarray(d[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(
                    f"malformed feature spec: {what} {name} is not a matrix of numbers"
                ) from None
            if arr.ndim != 2 or 0 in arr.shape or not np.isfinite(arr).all():
                raise ValueError(
                    f"malformed feature spec: {what} {name} must be a non-empty finite "
                    f"matrix, got shape {arr.shape}"
                )
            if np.abs(arr).max() > MAX_STATISTIC:
                raise ValueError(
                    f"malformed feature spec: {what} {name} holds {np.abs(arr).max():.3g}; "
                    f"fitted statistics stay far below {MAX_STATISTIC:g}"
                )
            arrays.append(arr)
        means, whitener = arrays
        if means.shape[1] != whitener.shape[0] or width not in (None, means.shape[1]):
            raise ValueError(
                f"malformed feature spec: {what} means {means.shape} and whitener "
                f"{whitener.shape} do not fit together"
                + (f" or the {width} features they describe" if width is not None else "")
            )
        classes = None
        if "classes" in d:
            raw = d["classes"]
            if (
                not isinstance(raw, list)
                or len(raw) != len(means)
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in raw)
                or sorted(set(raw)) != raw
            ):
                raise ValueError(
                    f"malformed feature spec: {what} classes must be {len(means)} increasing "
                    "class ids, one per mean"
                )
            classes = np.asarray(raw, dtype=np.int64)
        return cls(means, whitener, classes)


LOG_FLOOR = 1e-30
#: Layers whose pooled input is wider than this get no activation feature.
MAX_ACTIVATION_DIM = 512


class FeatureExtractor:
    """Model + input batch -> the feature vector H is fitted on.

    Args:
        model: the classifier in eval mode (input [B, ...], logits [B, C]).
        losses: confounding losses whose per-parameter norms are features.
        logit_stats: names from ``LOGIT_STATS``.
        layers: modules whose input activations get a Mahalanobis feature (needs
            ``fit``; inputs wider than ``MAX_ACTIVATION_DIM`` after pooling are dropped
            there); None picks ``default_layers(model)``, () none.
        novelty: add the gradient-novelty feature (needs ``fit``).
        params: parameter names for the probe (default: all trainable).
        views: names from ``detectors.views.VIEWS``; each adds the prediction's shift on
            that view of the input (image batches [B, C, H, W] only).
    """

    def __init__(
        self,
        model: nn.Module,
        losses: Sequence[str] = DEFAULT_LOSSES,
        logit_stats: Sequence[str] = DEFAULT_STATS,
        layers: Sequence[str] | None = None,
        novelty: bool = True,
        params: Sequence[str] | None = None,
        views: Sequence[str] = (),
    ) -> None:
        unknown = [s for s in logit_stats if s not in LOGIT_STATS]
        if unknown:
            raise ValueError(f"unknown logit statistic(s) {unknown}; known: {list(LOGIT_STATS)}")
        if not losses:
            raise ValueError("at least one confounding loss is needed")
        for loss in losses:
            get_loss(loss)  # an unknown name fails here, not at the first batch
        self.model = model
        self.losses = tuple(losses)
        self.logit_stats = tuple(logit_stats)
        self.layers = tuple(default_layers(model) if layers is None else layers)
        for name in self.layers:
            try:
                model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"layer {name!r} is not a submodule of the model") from None
        self.novelty = novelty
        self.views = check_views(tuple(views))
        self.probe = GradientProbe(model, params=params)
        self.layer_stats_: dict[str, Gaussians] | None = None
        self.novelty_stats_: Gaussians | None = None

    # -- description ----------------------------------------------------------------------

    @property
    def needs_fit(self) -> bool:
        return bool(self.layers) or self.novelty

    @property
    def schema(self) -> list[dict[str, Any]]:
        """Ordered columns: {"name", "group", "shape", "log"}; ``log`` marks the columns
        that are positive and span orders of magnitude (H takes their logarithm)."""
        shapes = dict(self.model.named_parameters())
        cols = [
            {
                "name": f"grad/{loss}/{p}",
                "group": "gradient",
                "shape": list(shapes[p].shape),
                "log": True,
            }
            for loss in self.losses
            for p in self.probe.feature_names
        ]
        cols += [
            {"name": f"logit/{s}", "group": "logit", "shape": [], "log": False}
            for s in self.logit_stats
        ]
        cols += [
            {"name": f"activation/{n}/mahalanobis", "group": "activation", "shape": [], "log": True}
            for n in self.layers
        ]
        if self.novelty:
            cols.append({"name": "gradient/novelty", "group": "novelty", "shape": [], "log": True})
        cols += [
            {"name": f"view/{v}/shift", "group": "view", "shape": [], "log": True}
            for v in self.views
        ]
        return cols

    @property
    def log_columns(self) -> np.ndarray:
        """bool [F]: columns H should log-transform."""
        return np.array([c["log"] for c in self.schema])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, including the fitted statistics."""
        self._check_fitted()
        spec = {
            "losses": list(self.losses),
            "params": list(self.probe.feature_names),
            "logit_stats": list(self.logit_stats),
            "layers": {n: g.to_dict() for n, g in (self.layer_stats_ or {}).items()},
            "novelty": self.novelty_stats_.to_dict() if self.novelty_stats_ else None,
        }
        if self.views:  # absent without views: bundles written before views still load
            spec["views"] = list(self.views)
        return spec

    @classmethod
    def from_dict(cls, model: nn.Module, spec: dict[str, Any]) -> FeatureExtractor:
        """Rebuild from ``to_dict()`` output for ``model``; ValueError on a malformed spec."""
        try:
            layers = spec["layers"]
            ext = cls(
                model,
                spec["losses"],
                spec["logit_stats"],
                list(layers),
                spec["novelty"] is not None,
                spec["params"],
                views=spec.get("views", ()),
            )
            ext.layer_stats_ = {
                n: Gaussians.from_dict(
                    d, f"layer {n!r}", width=pooled_width(model.get_submodule(n))
                )
                for n, d in layers.items()
            }
            if spec["novelty"] is not None:
                ext.novelty_stats_ = Gaussians.from_dict(
                    spec["novelty"], "novelty", width=len(ext.losses) * ext.probe.num_features
                )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed feature spec: missing or bad field {exc}") from None
        return ext

    # -- fitting and extraction -----------------------------------------------------------

    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 128,
        progress: str | None = None,
    ) -> FeatureExtractor:
        """Fit the activation and novelty statistics on clean images [N, ...], labels [N]."""
        if not self.needs_fit:
            return self
        grads, acts, preds = [], {n: [] for n in self.layers}, []
        for x in self._iterate(images, batch_size, progress):
            out = self.probe.run(x, losses=self.losses, capture=self.layers)
            if not preds:  # wide activations make huge, ill-conditioned covariances: skip
                self.layers = tuple(
                    n for n in self.layers if pool(out.captured[n]).shape[1] <= MAX_ACTIVATION_DIM
                )
                acts = {n: acts[n] for n in self.layers}
            grads.append(self._grad_block(out))
            preds.append(out.logits.argmax(1).cpu().numpy())
            for n in self.layers:
                acts[n].append(pool(out.captured[n]).double().cpu().numpy())
        self.layer_stats_ = {n: Gaussians.fit(np.concatenate(a), labels) for n, a in acts.items()}
        if self.novelty:
            # Grouped by the *predicted* class: that is all serving time will know.
            self.novelty_stats_ = Gaussians.fit(_log(np.concatenate(grads)), np.concatenate(preds))
        return self

    def extract(self, x: Tensor) -> Extracted:
        """x: float [B, ...] on the model's device -> logits and features."""
        self._check_fitted()
        out = self.probe.run(x, losses=self.losses, capture=self.layers)
        t0 = time.perf_counter()
        logits = out.logits.double()
        grads = self._grad_block(out)
        parts = [
            grads,
            torch.stack([LOGIT_STATS[s](logits) for s in self.logit_stats], 1).cpu().numpy()
            if self.logit_stats
            else np.zeros((len(grads), 0)),
        ]
        for n in self.layers:
            pooled = pool(out.captured[n]).double().cpu().numpy()
            parts.append(self.layer_stats_[n].closest(pooled)[:, None])  # type: ignore[index]
        if self.novelty:
            pred = out.logits.argmax(1).cpu().numpy()
            parts.append(self.novelty_stats_.to_class(_log(grads), pred)[:, None])  # type: ignore[union-attr]
        timings = dict(out.timings)
        if self.views:  # forward passes: timed as such, not as statistics
            t1 = time.perf_counter()
            with torch.no_grad():
                parts.append(view_shifts(self.model, x, out.logits, self.views).cpu().numpy())
            timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - t1
            t0 += time.perf_counter() - t1
        feats = np.concatenate(parts, axis=1)
        timings["statistics"] = time.perf_counter() - t0
        return Extracted(out.logits.float().cpu().numpy(), feats, timings)

    def extract_images(
        self, images: np.ndarray, batch_size: int = 128, progress: str | None = None
    ) -> Extracted:
        """images float32 [N, ...] -> logits [N, C], features [N, F], in batches."""
        chunks = [self.extract(x) for x in self._iterate(images, batch_size, progress)]
        return Extracted(
            np.concatenate([c.logits for c in chunks]), np.concatenate([c.features for c in chunks])
        )

    def _grad_block(self, out: Any) -> np.ndarray:
        return torch.cat([out.features[loss].double() for loss in self.losses], 1).cpu().numpy()

    def _iterate(self, images: np.ndarray, batch_size: int, progress: str | None):
        p = next(self.model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        starts = range(0, len(images), batch_size)
        if progress is not None:  # a lab run: the bar needs tqdm (the lab extra)
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=progress, leave=False)
        for i in starts:
            yield torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)

    def _check_fitted(self) -> None:
        if (self.layers and self.layer_stats_ is None) or (
            self.novelty and self.novelty_stats_ is None
        ):
            raise ValueError(
                "the activation/novelty features are not fitted: call fit() on clean data"
            )


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, LOG_FLOOR))
