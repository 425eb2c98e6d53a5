"""The feature vector H reads, as a function of the input that autograd can differentiate.

``FeatureExtractor.extract`` (what the server runs) detaches everything: it only needs
numbers. An attacker who knows gradsentry needs d(features)/d(input). This module
recomputes the same vector with every step kept in the graph:

- per-parameter squared gradient norms of each confounding loss: one batched forward
  records each probed layer's inputs and output; ``torch.autograd.grad(J, outputs,
  create_graph=True)`` gives every sample's output gradient (samples never interact in
  eval mode); the probe's own norm rules (``detectors.probe.rules``) turn them into
  per-sample norms — the same arithmetic the probe does, now differentiable in x (a
  double backward);
- logit statistics, activation Mahalanobis distances and gradient novelty, from the same
  forward, with the extractor's fitted statistics as float64 constants;
- the prediction's shift on each squeezed view (``detectors.views``), one more forward
  pass per view, through the same torch view the server applies.

The result matches ``FeatureExtractor.extract`` to float32 rounding (tests compare them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detectors.features import LOG_FLOOR, LOGIT_STATS, FeatureExtractor, Gaussians, pool
from detectors.losses import get_loss
from detectors.probe.registry import ProbeError, rule_for
from detectors.views import view_shifts


class GaussianDistance(nn.Module):
    """``Gaussians`` in torch: distances [B] of float64 rows [B, D] (differentiable)."""

    def __init__(self, g: Gaussians) -> None:
        super().__init__()
        self.means = torch.from_numpy(np.asarray(g.means, dtype=np.float64))
        self.whitener = torch.from_numpy(np.asarray(g.whitener, dtype=np.float64))
        ids = np.arange(len(g.means)) if g.classes is None else np.asarray(g.classes)
        self.ids = torch.from_numpy(ids.astype(np.int64))

    def _squared(self, feats: Tensor) -> Tensor:
        """[B, K] squared whitened distances to every class mean."""
        white, centres = feats @ self.whitener, self.means @ self.whitener
        return torch.stack([(white - c).square().sum(1) for c in centres], 1)

    def closest(self, feats: Tensor) -> Tensor:
        """[B]: distance to the closest class mean (``Gaussians.closest``)."""
        return self._squared(feats).amin(1).sqrt()

    def to_class(self, feats: Tensor, classes: Tensor) -> Tensor:
        """[B]: distance to the mean of ``classes[i]``, the closest one for a class the
        statistics never saw (``Gaussians.to_class``)."""
        rows = torch.searchsorted(self.ids, classes).clamp(0, len(self.ids) - 1)
        seen = self.ids[rows] == classes
        diff = (feats - self.means[rows]) @ self.whitener
        own = diff.square().sum(1).sqrt()
        return torch.where(seen, own, self.closest(feats)) if not bool(seen.all()) else own


class TorchFeatures(nn.Module):
    """x float32 [B, ...] -> (logits float32 [B, C], features float64 [B, F]), differentiable.

    Built from a fitted ``FeatureExtractor`` (``Sentry.extractor``); the columns are in
    ``extractor.schema`` order. The model must be in eval mode and every probed parameter
    must belong to a module with a norm rule (the demos' models do); parameters the probe
    follows op by op are refused here.
    """

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        extractor._check_fitted()
        self.model = extractor.model
        self.losses = tuple(extractor.losses)
        self.logit_stats = tuple(extractor.logit_stats)
        self.layers = tuple(extractor.layers)
        self.views = tuple(extractor.views)
        owners: dict[str, tuple[str, nn.Module, str]] = {}
        for mod_name, module in self.model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for local, _ in module.named_parameters(recurse=False):
                owners[prefix + local] = (mod_name, module, local)
        # module name -> (module, [(local parameter name, column)])
        self.units: dict[str, tuple[nn.Module, list[tuple[str, int]]]] = {}
        for column, name in enumerate(extractor.probe.feature_names):
            mod_name, module, local = owners[name]
            if rule_for(module) is None:
                raise ProbeError(
                    f"parameter {name!r} belongs to {type(module).__name__}, which has no norm "
                    "rule; the differentiable features need one"
                )
            self.units.setdefault(mod_name, (module, []))[1].append((local, column))
        self.n_params = len(extractor.probe.feature_names)
        self.layer_stats = {
            n: GaussianDistance(g) for n, g in (extractor.layer_stats_ or {}).items()
        }
        self.novelty = (
            GaussianDistance(extractor.novelty_stats_) if extractor.novelty_stats_ else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.model.training:
            raise ProbeError("the model is in training mode; per-sample features need model.eval()")
        records: dict[str, tuple[tuple[Any, ...], Tensor]] = {}
        captured: dict[str, Tensor] = {}
        handles = []
        for name, (module, _) in self.units.items():
            handles.append(module.register_forward_hook(self._record(name, records)))
        for name in self.layers:
            handles.append(
                self.model.get_submodule(name).register_forward_pre_hook(
                    lambda _m, args, name=name: captured.__setitem__(name, args[0])
                )
            )
        try:
            with torch.enable_grad():
                if not x.requires_grad:  # features of a constant input: still a graph
                    x = x.detach().requires_grad_(True)
                logits = self.model(x)
                names = list(records)
                outputs = [records[n][1] for n in names]
                grads = []
                for loss in self.losses:
                    g_out = torch.autograd.grad(
                        get_loss(loss)(logits).sum(), outputs, create_graph=True, allow_unused=True
                    )
                    cols: list[Tensor | None] = [None] * self.n_params
                    for name, g in zip(names, g_out, strict=True):
                        module, params = self.units[name]
                        if g is None:  # a layer the logits do not depend on: zero norms
                            g = torch.zeros_like(records[name][1])
                        norms = rule_for(module)(module, records[name][0], g)  # type: ignore[misc]
                        for local, column in params:
                            cols[column] = norms[local].to(torch.float32)
                    grads.append(torch.stack(cols, 1))  # type: ignore[arg-type]
        finally:
            for h in handles:
                h.remove()
        grad_block = torch.cat(grads, 1).double()
        z = logits.double()
        parts = [grad_block]
        if self.logit_stats:
            parts.append(torch.stack([LOGIT_STATS[s](z) for s in self.logit_stats], 1))
        for n in self.layers:
            parts.append(self.layer_stats[n].closest(pool(captured[n]).double())[:, None])
        if self.novelty is not None:
            log_grads = grad_block.clamp_min(LOG_FLOOR).log()
            parts.append(self.novelty.to_class(log_grads, logits.argmax(1))[:, None])
        if self.views:  # after the hooks are gone: the view's forward records nothing
            with torch.enable_grad():
                parts.append(view_shifts(self.model, x, logits, self.views))
        return logits, torch.cat(parts, 1)

    @staticmethod
    def _record(name: str, records: dict[str, tuple[tuple[Any, ...], Tensor]]):
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            records[name] = (args, output)
            # The forward goes on with a copy: an in-place op after this layer
            # (ReLU(inplace=True)) must not overwrite the output we differentiate against.
            return output.clone()

        return hook
