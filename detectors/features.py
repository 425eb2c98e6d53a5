"""The feature vector H reads: confounding-gradient norms plus output statistics.

For an input batch x [B, ...] one probe pass gives
- per-parameter squared gradient norms for each confounding loss (the method's core:
  ``all_ones`` by default, optionally more targets, e.g. ``predicted``), and
- statistics of the same forward pass's output (max softmax, logit margin, entropy,
  energy, max logit) and, when fitted, the Mahalanobis distance of the penultimate
  activations (the last Linear layer's input) to the closest class mean.
Everything needed to recompute the vector is described by ``to_dict()`` (plain JSON),
which the detector bundle stores; ``schema`` names every column in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from detectors.evaluate.baselines.mahalanobis import fit_tied_gaussian, min_class_distance
from detectors.probe import GradientProbe

# name -> logits [B, C] -> [B]
LOGIT_STATS: dict[str, Callable[[Tensor], Tensor]] = {
    "msp": lambda z: F.softmax(z, 1).amax(1),
    "margin": lambda z: (lambda t: t[:, 0] - t[:, 1])(z.topk(2, dim=1).values),
    "entropy": lambda z: -(F.softmax(z, 1) * F.log_softmax(z, 1)).sum(1),
    "energy": lambda z: -torch.logsumexp(z, 1),
    "max_logit": lambda z: z.amax(1),
}
DEFAULT_LOSSES: tuple[str, ...] = ("all_ones",)
DEFAULT_STATS: tuple[str, ...] = tuple(LOGIT_STATS)


def head_name(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` in ``model.named_modules()`` order, or None."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


@dataclass(frozen=True)
class Extracted:
    """logits float32 [B, C]; features float64 [B, F]."""

    logits: np.ndarray
    features: np.ndarray


class FeatureExtractor:
    """Model + input batch -> the feature vector H is fitted on.

    Args:
        model: the classifier in eval mode (input [B, ...], logits [B, C]).
        losses: confounding losses whose per-parameter norms are features.
        logit_stats: names from ``LOGIT_STATS``.
        mahalanobis: add the penultimate Mahalanobis distance (needs ``fit``).
        params: parameter names for the probe (default: all trainable).
    """

    def __init__(
        self,
        model: nn.Module,
        losses: Sequence[str] = DEFAULT_LOSSES,
        logit_stats: Sequence[str] = DEFAULT_STATS,
        mahalanobis: bool = True,
        params: Sequence[str] | None = None,
    ) -> None:
        unknown = [s for s in logit_stats if s not in LOGIT_STATS]
        if unknown:
            raise ValueError(f"unknown logit statistic(s) {unknown}; known: {list(LOGIT_STATS)}")
        if not losses:
            raise ValueError("at least one confounding loss is needed")
        self.model = model
        self.losses = tuple(losses)
        self.logit_stats = tuple(logit_stats)
        self.mahalanobis = mahalanobis
        self.probe = GradientProbe(model, params=params)
        self.head = head_name(model) if mahalanobis else None
        if mahalanobis and self.head is None:
            raise ValueError("mahalanobis=True needs a final nn.Linear layer; the model has none")
        self.means_: np.ndarray | None = None
        self.whitener_: np.ndarray | None = None

    # -- description ----------------------------------------------------------------------

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
        if self.mahalanobis:
            cols.append(
                {
                    "name": "penultimate/mahalanobis",
                    "group": "penultimate",
                    "shape": [],
                    "log": True,
                }
            )
        return cols

    @property
    def log_columns(self) -> np.ndarray:
        """bool [F]: columns H should log-transform."""
        return np.array([c["log"] for c in self.schema])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, including the fitted Mahalanobis statistics."""
        out: dict[str, Any] = {
            "losses": list(self.losses),
            "params": list(self.probe.feature_names),
            "logit_stats": list(self.logit_stats),
            "mahalanobis": None,
        }
        if self.mahalanobis:
            self._check_fitted()
            out["mahalanobis"] = {
                "head": self.head,
                "means": self.means_.tolist(),  # type: ignore[union-attr]
                "whitener": self.whitener_.tolist(),  # type: ignore[union-attr]
            }
        return out

    @classmethod
    def from_dict(cls, model: nn.Module, spec: dict[str, Any]) -> FeatureExtractor:
        """Rebuild from ``to_dict()`` output for ``model``; ValueError on a malformed spec."""
        try:
            maha = spec["mahalanobis"]
            ext = cls(model, spec["losses"], spec["logit_stats"], maha is not None, spec["params"])
            if maha is not None:
                if maha["head"] != ext.head:
                    raise ValueError(f"head {maha['head']!r} is not the model's last Linear")
                ext.means_ = np.asarray(maha["means"], dtype=np.float64)
                ext.whitener_ = np.asarray(maha["whitener"], dtype=np.float64)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed feature spec: missing or bad field {exc}") from None
        return ext

    # -- fitting and extraction -----------------------------------------------------------

    def fit(
        self, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
    ) -> FeatureExtractor:
        """Fit the Mahalanobis statistics on clean images float32 [N, ...] with labels [N]."""
        if not self.mahalanobis:
            return self
        feats = []
        capture: dict[str, Tensor] = {}
        head = self.model.get_submodule(self.head)  # type: ignore[arg-type]
        handle = head.register_forward_pre_hook(lambda _m, a: capture.__setitem__("a", a[0]))
        try:
            with torch.no_grad():
                for x in _batches(images, batch_size, self._device()):
                    self.model(x)
                    feats.append(capture["a"].double().cpu().numpy())
        finally:
            handle.remove()
        _, self.means_, self.whitener_ = fit_tied_gaussian(np.concatenate(feats), labels)
        return self

    def extract(self, x: Tensor) -> Extracted:
        """x: float [B, ...] on the model's device -> logits and features."""
        if self.mahalanobis:
            self._check_fitted()
        out = self.probe.run(x, losses=self.losses, capture=[self.head] if self.head else [])
        logits = out.logits
        parts = [out.features[loss].double() for loss in self.losses]
        parts += [LOGIT_STATS[s](logits.double()).unsqueeze(1) for s in self.logit_stats]
        feats = torch.cat(parts, dim=1).cpu().numpy()
        if self.mahalanobis:
            pen = out.captured[self.head].reshape(x.shape[0], -1).double().cpu().numpy()
            dist = min_class_distance(pen, self.means_, self.whitener_)  # type: ignore[arg-type]
            feats = np.concatenate([feats, dist[:, None]], axis=1)
        return Extracted(logits.float().cpu().numpy(), feats)

    def extract_images(
        self, images: np.ndarray, batch_size: int = 128, progress: str | None = None
    ) -> Extracted:
        """images float32 [N, ...] -> logits [N, C], features [N, F], in batches."""
        chunks = [
            self.extract(x)
            for x in tqdm(
                _batches(images, batch_size, self._device()),
                total=-(-len(images) // batch_size),
                desc=progress,
                disable=progress is None,
                leave=False,
            )
        ]
        return Extracted(
            np.concatenate([c.logits for c in chunks]), np.concatenate([c.features for c in chunks])
        )

    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _check_fitted(self) -> None:
        if self.means_ is None or self.whitener_ is None:
            raise ValueError("the Mahalanobis feature is not fitted: call fit() on clean data")


def _batches(images: np.ndarray, batch_size: int, device: torch.device):
    for i in range(0, len(images), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
