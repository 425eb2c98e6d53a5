"""L∞ projected gradient descent, oblivious or adaptive (Madry et al. 2018; Carlini &
Wagner 2017; Tramer et al. 2020).

The oblivious attack maximises the classifier's cross-entropy and knows nothing of the
detector. The adaptive attack minimises, per sample,

    max(z_y − max_{j≠y} z_j + κ, 0)  +  λ · max(d(x) + m, 0)

where z are the logits, y the true class and d(x) the detector's margin (> 0: flagged,
e.g. the log-odds of P(challenging) minus those of the threshold), computed by a
differentiable copy of the detector. Both hinges go flat once their goal is met with a
margin, so the step goes to whichever goal is still missing. The selective variant
(Bryniarski et al. 2022) steps on one term at a time: the class term until the input is
misclassified by κ, then the detector term — a sum lets the term with the larger
gradient drown the other. Every iterate is checked
(the attacker has the detector): the output is, per sample, the successful iterate
(misclassified, d < 0) with the lowest d, or the last iterate if none succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: x [B, ...] -> (logits [B, C], detector margin d [B], > 0 = flagged), differentiable.
Forward = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class PGDConfig:
    """eps: L∞ radius (inputs in [0, 1]); steps; step size = ``step_factor``·eps/steps
    (Madry et al.'s 2.5); kappa: logit margin past the boundary; margin: detector margin
    m below the threshold; seed: of the random start in the eps-ball; random_start: start
    there (Madry et al.) instead of at x."""

    eps: float
    steps: int = 40
    step_factor: float = 2.5
    kappa: float = 1.0
    margin: float = 0.1
    seed: int = 0
    random_start: bool = True

    @property
    def step_size(self) -> float:
        return self.step_factor * self.eps / self.steps


def _start(x: Tensor, cfg: PGDConfig) -> Tensor:
    if not cfg.random_start:
        return x.clone()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    noise = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * cfg.eps
    return (x + noise.to(x.device)).clamp(0, 1)


def _step(x_adv: Tensor, grad: Tensor, x: Tensor, cfg: PGDConfig, sign: float) -> Tensor:
    x_adv = x_adv + sign * cfg.step_size * grad.sign()
    return torch.min(torch.max(x_adv, x - cfg.eps), x + cfg.eps).clamp(0, 1)


def class_margin(logits: Tensor, y: Tensor) -> Tensor:
    """[B] z_y − max_{j≠y} z_j: positive while the true class still wins."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true - others.amax(1)


def oblivious_pgd(model: torch.nn.Module, x: Tensor, y: Tensor, cfg: PGDConfig) -> Tensor:
    """x float32 [B, ...] in [0, 1], y int64 [B] -> adversarial x [B, ...] (last iterate):
    maximises cross-entropy, blind to any detector."""
    x_adv = _start(x, cfg)
    for _ in range(cfg.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = _step(x_adv.detach(), grad, x, cfg, +1.0)
    return x_adv.detach()


def adaptive_pgd(
    forward: Forward, x: Tensor, y: Tensor, cfg: PGDConfig, lam: float | None
) -> tuple[Tensor, Tensor]:
    """x float32 [B, ...] in [0, 1], y int64 [B] -> (x_adv [B, ...], success bool [B]
    as judged by ``forward``'s detector copy). ``lam`` ≥ 0 weighs the detector term;
    None: the selective loss (Bryniarski et al. 2022) — each sample steps on the class
    term while the true class still wins by less than κ, else on the detector term."""
    x_adv = _start(x, cfg)
    best = x_adv.clone()
    best_d = torch.full((len(x),), float("inf"), dtype=torch.float64, device=x.device)
    for step in range(cfg.steps + 1):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits, d = forward(x_adv)
            margin = class_margin(logits.double(), y)
            cls = (margin + cfg.kappa).clamp_min(0)
            det = (d + cfg.margin).clamp_min(0)
            loss = torch.where(cls > 0, cls, det) if lam is None else cls + lam * det
            grad = None
            if step < cfg.steps:
                (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        with torch.no_grad():
            d = d.detach()
            better = (margin.detach() < 0) & (d < 0) & (d < best_d)
            best[better] = x_adv.detach()[better]
            best_d = torch.where(better, d, best_d)
        if grad is None:
            break
        x_adv = _step(x_adv.detach(), grad, x, cfg, -1.0)
    success = torch.isfinite(best_d)
    out = torch.where(success.view(-1, *[1] * (x.dim() - 1)), best, x_adv.detach())
    return out, success
