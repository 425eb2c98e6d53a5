"""H in torch: the bundle's log transform, its ONNX heads (``OnnxHead``) and its strategy.

``TorchDetector(bundle)(features)`` gives P(challenging) — the number the server compares
with the bundle's threshold — and its log-odds, which an attack can push down without the
sigmoid's flat tails stopping it. The log-odds come from the heads' probability columns
directly (log p₁ − log p₀ for a binary head), never from 1 − P, which rounds to zero
exactly where an attacker starts (P ≈ 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from detectors.adaptive.onnx_torch import OnnxHead
from detectors.bundle import Bundle, _read_head
from detectors.detector import attribution

# Probabilities are clipped here before a log; float64 sigmoids of the heads' scores stay
# far above it (a head would need a raw score beyond ±700).
_TINY = 1e-300

#: strategy name -> (head probabilities {head: [N, C]}, kinds) -> (P(challenging) [N],
#: log-odds [N]); the torch twin of each ``Strategy.combine``'s first output (a test
#: checks every registered strategy has one and that they agree).
Combine = Callable[[Mapping[str, Tensor], Sequence[str]], tuple[Tensor, Tensor]]


def _log_odds(p: Tensor) -> Tensor:
    """[N] log p₁ − log p₀ of a two-column head [N, 2]."""
    return p[:, 1].clamp_min(_TINY).log() - p[:, 0].clamp_min(_TINY).log()


def _per_kind(probas: Mapping[str, Tensor], kinds: Sequence[str]) -> tuple[Tensor, Tensor]:
    # max over heads of p₁; log-odds are monotone in p₁, so their max is the max's.
    p = torch.stack([probas[k][:, 1] for k in kinds], 0).amax(0)
    return p, torch.stack([_log_odds(probas[k]) for k in kinds], 0).amax(0)


def _binary(probas: Mapping[str, Tensor], kinds: Sequence[str]) -> tuple[Tensor, Tensor]:
    p = probas["challenge"]
    return p[:, 1], _log_odds(p)


def _multiclass(probas: Mapping[str, Tensor], kinds: Sequence[str]) -> tuple[Tensor, Tensor]:
    p = probas["multiclass"]
    rest = p[:, 1:].sum(1)
    return (1.0 - p[:, 0]).clamp(0.0, 1.0), rest.clamp_min(_TINY).log() - p[:, 0].clamp_min(
        _TINY
    ).log()


COMBINE: dict[str, Combine] = {
    "per_kind": _per_kind,
    "binary": _binary,
    "multiclass": _multiclass,
}


class TorchDetector(nn.Module):
    """Raw features float64 [N, F] -> (P(challenging) [N], log-odds [N]), differentiable.

    Attributes: ``threshold`` (P ≥ threshold is flagged), ``logit_threshold`` (the same
    threshold on the log-odds).
    """

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        manifest = bundle.manifest
        strategy = manifest["strategy"]
        if strategy not in COMBINE:
            raise ValueError(
                f"strategy {strategy!r} has no torch twin here (known: {sorted(COMBINE)})"
            )
        self.combine = COMBINE[strategy]
        self.kinds = tuple(manifest["kinds"])
        transform = bundle.detector.transform_
        mask = transform.log_columns
        self.log_columns = torch.from_numpy(
            np.ones(bundle.detector.n_features_in_, bool) if mask is None else mask.copy()
        )
        self.floor = transform.floor
        self.heads = nn.ModuleDict(
            {
                name: OnnxHead(_read_head(bundle.path, name, entry), name)
                for name, entry in manifest["heads"].items()
                if name != attribution.HEAD  # kind attribution does not decide the flag
            }
        )
        self.threshold = float(manifest["threshold"])
        t = min(max(self.threshold, _TINY), 1.0 - 1e-16)
        self.logit_threshold = float(np.log(t) - np.log1p(-t))

    def transform(self, feats: Tensor) -> Tensor:
        """The bundle's ``LogTransform``: log(max(x, floor)) on the marked columns."""
        logged = feats.clamp_min(self.floor).log()
        return torch.where(self.log_columns, logged, feats)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        xt = self.transform(feats.double())
        probas = {name: head(xt) for name, head in self.heads.items()}
        return self.combine(probas, self.kinds)
