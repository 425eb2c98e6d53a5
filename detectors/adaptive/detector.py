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
from detectors.detector.transform import LogTransform

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

    Args:
        heads: {head name: ONNX bytes}, as a bundle stores them (an attribution head, if
            present, is ignored: it names kinds, it does not decide the flag).
        transform: the bundle's ``LogTransform``.
        strategy: name with a torch twin in ``COMBINE``.
        kinds: the fitted kinds, in the bundle's order.
        threshold: P ≥ threshold is flagged.

    Attributes: ``threshold``, ``logit_threshold`` (the same threshold on the log-odds).
    """

    def __init__(
        self,
        heads: Mapping[str, bytes],
        transform: LogTransform,
        strategy: str,
        kinds: Sequence[str],
        threshold: float,
    ) -> None:
        super().__init__()
        if strategy not in COMBINE:
            raise ValueError(
                f"strategy {strategy!r} has no torch twin here (known: {sorted(COMBINE)})"
            )
        self.combine = COMBINE[strategy]
        self.kinds = tuple(kinds)
        self.heads = nn.ModuleDict(
            {name: OnnxHead(data, name) for name, data in heads.items() if name != attribution.HEAD}
        )
        self.log_columns = (
            None if transform.log_columns is None else torch.from_numpy(transform.log_columns)
        )
        self.floor = transform.floor
        self.threshold = float(threshold)
        t = min(max(self.threshold, _TINY), 1.0 - 1e-16)
        self.logit_threshold = float(np.log(t) - np.log1p(-t))

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> TorchDetector:
        """The copy of a loaded bundle's H, its heads read (and sha256-checked) again."""
        m = bundle.manifest
        heads = {name: _read_head(bundle.path, name, entry) for name, entry in m["heads"].items()}
        return cls(heads, bundle.detector.transform_, m["strategy"], m["kinds"], m["threshold"])

    def transform(self, feats: Tensor) -> Tensor:
        """The bundle's ``LogTransform``: log(max(x, floor)) on the marked columns."""
        logged = feats.clamp_min(self.floor).log()
        return logged if self.log_columns is None else torch.where(self.log_columns, logged, feats)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        xt = self.transform(feats.double())
        probas = {name: head(xt) for name, head in self.heads.items()}
        return self.combine(probas, self.kinds)
