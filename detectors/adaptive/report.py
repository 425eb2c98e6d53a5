"""The adaptive-attack report: every detector, every ε, oblivious and adaptive PGD.

Figures per (detector, ε, attack), all from the *reference* scorers (the served
detector, the registered baselines), never from the attacker's copies:
- ``misclassified``: share of the attack's outputs the classifier gets wrong;
- ``flagged``: share flagged at the detector's calibrated threshold;
- ``success``: misclassified and not flagged — the attacker's goal;
- ``auroc``: the detector's AUROC, the attack's outputs against the same clean inputs;
- ``auroc_misclassified``: the same on the misclassified outputs only (None if none).

The adaptive rows are per loss weight λ (``"selective"`` for the selective loss) and
``best``: per input, the attacker keeps a successful output of any run at this ε or a
smaller one (those lie inside this ε-ball too), the oblivious ones included — the one
with the lowest score — else the lowest-scored one. Larger steps at a larger ε can do
worse than smaller ones; a real attacker keeps what works, so ``best`` is monotone in ε
and never below the oblivious attack by construction.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detectors.adaptive.pgd import PGDConfig, adaptive_pgd, oblivious_pgd
from detectors.adaptive.setup import AttackSetup
from detectors.adaptive.targets import AttackTarget, create_target
from detectors.bundle import load_bundle
from detectors.evaluate.metrics import detection_metrics

FORMAT_VERSION = 1
METRICS = ("misclassified", "flagged", "success", "auroc", "auroc_misclassified")


@dataclass(frozen=True)
class ReportConfig:
    """n test inputs (the first n); eps radii; PGD steps; loss weights λ (None: the
    selective loss); margins κ and m; step size factor; seed of the oblivious attack's
    random start (the adaptive one starts at the clean input: a random start in the ball
    is noise the detector was fitted to flag, and measured worse)."""

    n: int = 500
    eps: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    steps: int = 40
    lambdas: tuple[float | None, ...] = (0.1, 1.0)
    kappa: float = 1.0
    margin: float = 0.1
    step_factor: float = 2.5
    seed: int = 0
    batch_size: int = 250
    targets: tuple[str, ...] = ("gradsentry", "mahalanobis", "knn")


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, since: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - since


def _batches(x: torch.Tensor, y: torch.Tensor, size: int):
    for i in range(0, len(x), size):
        yield x[i : i + size], y[i : i + size]


def predictions(model: torch.nn.Module, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """int64 [N]: the classifier's class for each image."""
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(images[i : i + batch_size])).argmax(1).numpy()
                for i in range(0, len(images), batch_size)
            ]
        )


def outcome(
    target: AttackTarget,
    clean_scores: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    scores: np.ndarray,
) -> dict[str, Any]:
    """The report's figures for one set of attack outputs (see the module docstring)."""
    wrong = preds != labels
    flagged = scores >= target.threshold
    return {
        "misclassified": float(wrong.mean()),
        "flagged": float(flagged.mean()),
        "success": float((wrong & ~flagged).mean()),
        "auroc": detection_metrics(clean_scores, scores).auroc,
        "auroc_misclassified": (
            detection_metrics(clean_scores, scores[wrong]).auroc if wrong.any() else None
        ),
        "median_margin": float(np.median(target.margin_of(scores))),
    }


def run_report(
    setup: AttackSetup,
    cfg: ReportConfig,
    progress: bool = False,
    partial: Path | None = None,
) -> dict[str, Any]:
    """Run every attack on ``setup``; the JSON-able report (see ``FORMAT_VERSION``).

    partial: where to write the report so far after each ε (a long run that is stopped
    keeps its finished radii), removed once the report is complete."""
    model = setup.model
    manifest = load_bundle(setup.bundle).manifest
    target_fpr = float(manifest["target_fpr"])
    images = np.ascontiguousarray(setup.test.images[: cfg.n], dtype=np.float32)
    labels = setup.test.labels[: cfg.n].astype(np.int64)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    timer = _Timer()
    t0 = time.perf_counter()
    targets = {name: create_target(name).prepare(setup, target_fpr) for name in cfg.targets}
    timer.add("prepare", t0)
    clean_preds = predictions(model, images)
    detectors: dict[str, Any] = {}
    clean: dict[str, np.ndarray] = {}
    for name, target in targets.items():
        clean[name] = target.score(images)
        detectors[name] = {
            "threshold": target.threshold,
            "clean_flagged": float((clean[name] >= target.threshold).mean()),
        }
    results: list[dict[str, Any]] = []
    runs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in targets}
    for eps in sorted(cfg.eps):
        pgd = PGDConfig(eps, cfg.steps, cfg.step_factor, cfg.kappa, cfg.margin, cfg.seed)
        own = PGDConfig(eps, cfg.steps, cfg.step_factor, cfg.kappa, cfg.margin, cfg.seed, False)
        t0 = time.perf_counter()
        obl = torch.cat(
            [oblivious_pgd(model, xb, yb, pgd) for xb, yb in _batches(x, y, cfg.batch_size)]
        )
        timer.add("oblivious", t0)
        obl_np = obl.numpy()
        obl_preds = predictions(model, obl_np)
        for name, target in targets.items():
            _say(progress, f"{setup.name}: eps {eps}, {name}")
            row = {"detector": name, "eps": eps}
            obl_scores = target.score(obl_np)
            results.append(
                {
                    **row,
                    "attack": "oblivious",
                    "lambda": None,
                    **outcome(target, clean[name], labels, obl_preds, obl_scores),
                }
            )
            runs[name].append((obl_preds, obl_scores))
            for lam in cfg.lambdas:
                t0 = time.perf_counter()
                adv = torch.cat(
                    [
                        adaptive_pgd(target.forward, xb, yb, own, lam)[0]
                        for xb, yb in _batches(x, y, cfg.batch_size)
                    ]
                ).numpy()
                timer.add(f"adaptive/{name}", t0)
                preds, scores = predictions(model, adv), target.score(adv)
                runs[name].append((preds, scores))
                results.append(
                    {
                        **row,
                        "attack": "adaptive",
                        "lambda": lambda_label(lam),
                        **outcome(target, clean[name], labels, preds, scores),
                    }
                )
            preds, scores = best_of(runs[name], labels, target.threshold)
            results.append(
                {
                    **row,
                    "attack": "adaptive",
                    "lambda": "best",
                    **outcome(target, clean[name], labels, preds, scores),
                }
            )
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            head = _header(setup, cfg, images, labels, clean_preds, target_fpr, manifest)
            body = {**head, "detectors": detectors, "results": results}
            partial.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    if partial is not None:
        partial.unlink(missing_ok=True)
    return {
        **_header(setup, cfg, images, labels, clean_preds, target_fpr, manifest),
        "detectors": detectors,
        "results": results,
        "seconds": {k: round(v, 1) for k, v in timer.seconds.items()},
        "torch_threads": torch.get_num_threads(),
    }


def _header(
    setup: AttackSetup,
    cfg: ReportConfig,
    images: np.ndarray,
    labels: np.ndarray,
    clean_preds: np.ndarray,
    target_fpr: float,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """The report's fields that do not depend on the attacks' outcomes."""
    return {
        "format_version": FORMAT_VERSION,
        "demo": setup.name,
        "data": setup.description,
        "n": len(images),
        "clean_accuracy": float((clean_preds == labels).mean()),
        "target_fpr": target_fpr,
        # Which bundle was attacked: a refitted bundle needs a fresh report.
        "bundle": {k: manifest[k] for k in ("created", "model_fingerprint", "threshold")},
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
    }


def lambda_label(lam: float | None) -> float | str:
    """How a loss weight appears in the report: the number, or "selective" for None."""
    return "selective" if lam is None else lam


def best_of(
    runs: Sequence[tuple[np.ndarray, np.ndarray]], labels: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per input, over runs of (preds [N], scores [N]): the lowest-scored successful
    output if any run succeeded, else the lowest-scored output. Returns (preds, scores)."""
    preds = np.stack([p for p, _ in runs])  # [R, N]
    scores = np.stack([s for _, s in runs])
    success = (preds != labels) & (scores < threshold)
    # Lowest score among the successful runs, else the lowest score of all.
    pick = np.where(success.any(0), np.where(success, scores, np.inf).argmin(0), scores.argmin(0))
    cols = np.arange(len(labels))
    return preds[pick, cols], scores[pick, cols]


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["detector"], row["eps"], row["attack"], row["lambda"]


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def check_report(report: dict[str, Any]) -> list[str]:
    """What a complete report lacks: one line per missing or non-finite figure (empty: ok)."""
    problems = []
    lambdas = [*map(lambda_label, report["config"]["lambdas"]), "best"]
    for det in report["config"]["targets"]:
        if det not in report["detectors"]:
            problems.append(f"no threshold for {det}")
        for eps in report["config"]["eps"]:
            wanted = [("oblivious", None)] + [("adaptive", lam) for lam in lambdas]
            for attack, lam in wanted:
                key = (det, eps, attack, lam)
                rows = [r for r in report["results"] if _key(r) == key]
                if len(rows) != 1:
                    problems.append(f"{det} eps {eps} {attack} λ={lam}: {len(rows)} rows")
                    continue
                for metric in METRICS:
                    v = rows[0].get(metric, "missing")
                    if metric == "auroc_misclassified" and v is None:
                        continue
                    if not isinstance(v, float) or not math.isfinite(v) or not 0 <= v <= 1:
                        problems.append(f"{det} eps {eps} {attack} λ={lam}: {metric} = {v!r}")
    return problems


def markdown_table(report: dict[str, Any]) -> str:
    """Success rate and AUROC per detector and ε: oblivious vs adaptive (best λ)."""
    lines = [
        "| detector | ε | oblivious: success | oblivious: AUROC | adaptive: success "
        "| adaptive: AUROC | adaptive: misclassified | adaptive: flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    index = {_key(r): r for r in report["results"]}
    for det in report["config"]["targets"]:
        for eps in report["config"]["eps"]:
            o = index[(det, eps, "oblivious", None)]
            a = index[(det, eps, "adaptive", "best")]
            lines.append(
                f"| {det} | {eps:g} | {o['success']:.1%} | {o['auroc']:.3f} | "
                f"{a['success']:.1%} | {a['auroc']:.3f} | {a['misclassified']:.1%} | "
                f"{a['flagged']:.1%} |"
            )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Success rate and AUROC against ε, adaptive (solid) and oblivious (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    eps = report["config"]["eps"]
    index = {_key(r): r for r in report["results"]}
    for i, det in enumerate(report["config"]["targets"]):
        colour = f"C{i}"
        for attack, lam, style in (("adaptive", "best", "-"), ("oblivious", None, "--")):
            rows = [index[(det, e, attack, lam)] for e in eps]
            for ax, key in zip(axes, ("success", "auroc"), strict=True):
                label = f"{det}, {attack}"
                ax.plot(eps, [r[key] for r in rows], style, marker="o", color=colour, label=label)
    axes[0].set_ylabel("attack success (misclassified, not flagged)")
    axes[1].set_ylabel("detector AUROC, attack outputs vs clean")
    for ax in axes:
        ax.set_xlabel("ε (L∞)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{report['demo']}: adaptive vs oblivious PGD, n = {report['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
