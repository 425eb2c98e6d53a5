"""``gradsentry attack``: the adaptive-attack report on a demo (JSON, plot, markdown table).

White-box PGD that knows the detector (its loss adds a low detector score to
misclassification, differentiated through the features and a torch copy of H), against
gradsentry, Mahalanobis and KNN, beside the oblivious PGD at the same ε. See
``detectors.adaptive`` and docs/adaptive.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from detectors.adaptive.demos import available_demos, load_demo
from detectors.adaptive.report import ReportConfig, check_report, markdown_table, plot, run_report
from detectors.adaptive.targets import available_targets
from detectors.cli.common import USER_ERRORS, CliError

__all__ = ["USER_ERRORS", "add_arguments", "run"]

DEFAULTS = ReportConfig()


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _lambdas(text: str) -> tuple[float | None, ...]:
    out: list[float | None] = []
    for v in (v for v in text.split(",") if v):
        if v == "selective":
            out.append(None)
            continue
        try:
            out.append(float(v))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"loss weights are numbers or 'selective', got {v!r}"
            ) from None
    return tuple(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this subcommand; sets ``run``."""
    p.add_argument("--demo", default="mnist", help=f"one of {available_demos()}")
    p.add_argument("--data", type=Path, help="the demo's data (default: the demo's own path)")
    p.add_argument("--n", type=int, default=DEFAULTS.n, help="test inputs attacked (the first n)")
    p.add_argument("--eps", type=_floats, default=DEFAULTS.eps, help="L∞ radii, e.g. 0.05,0.1")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="PGD steps")
    p.add_argument(
        "--lambdas",
        type=_lambdas,
        default=DEFAULTS.lambdas,
        help="detector loss weights; 'selective' = one term at a time (default 0.1,1)",
    )
    p.add_argument(
        "--detectors",
        default=",".join(DEFAULTS.targets),
        help=f"comma-separated, of {available_targets()}",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, help="report path (default docs/adaptive-DEMO.json)")
    p.add_argument("--plot", type=Path, help="figure path (default: the JSON's, .png)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def _config(args: argparse.Namespace) -> ReportConfig:
    if args.demo not in available_demos():
        raise CliError(f"unknown demo {args.demo!r}; known: {', '.join(available_demos())}")
    targets = tuple(t for t in args.detectors.split(",") if t)
    unknown = [t for t in targets if t not in available_targets()]
    if unknown or not targets:
        raise CliError(f"unknown detector(s) {unknown}; known: {', '.join(available_targets())}")
    if not args.eps or not all(0 < e <= 1 for e in args.eps):
        raise CliError(f"--eps must be numbers in (0, 1], got {list(args.eps)}")
    if args.n < 2 or args.steps < 1:
        raise CliError("--n must be ≥ 2 and --steps ≥ 1")
    if not args.lambdas or any(
        lam is not None and not (math.isfinite(lam) and lam >= 0) for lam in args.lambdas
    ):
        raise CliError("--lambdas must be numbers ≥ 0 or 'selective'")
    return ReportConfig(
        n=args.n,
        eps=tuple(args.eps),
        steps=args.steps,
        lambdas=tuple(args.lambdas),
        seed=args.seed,
        targets=targets,
    )


def _command(args: argparse.Namespace, cfg: ReportConfig) -> str:
    lams = ",".join("selective" if v is None else f"{v:g}" for v in cfg.lambdas)
    data = f" --data {args.data}" if args.data else ""
    return (
        f"gradsentry attack --demo {args.demo}{data} --n {cfg.n} "
        f"--eps {','.join(f'{e:g}' for e in cfg.eps)} --steps {cfg.steps} --lambdas {lams} "
        f"--detectors {','.join(cfg.targets)} --seed {cfg.seed}"
    )


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.threads is not None:
        if args.threads < 1:
            raise CliError("--threads must be ≥ 1")
        torch.set_num_threads(args.threads)
    json_path = args.json or Path("docs") / f"adaptive-{args.demo}.json"
    plot_path = args.plot or json_path.with_suffix(".png")
    setup = load_demo(args.demo, args.data)
    if cfg.n > len(setup.test.images):
        raise CliError(f"--n {cfg.n}: the {args.demo} test split has {len(setup.test.images)}")
    start = time.perf_counter()
    partial = json_path.with_suffix(".partial.json")
    report = run_report(setup, cfg, progress=not args.quiet, partial=partial)
    report["command"] = _command(args, cfg)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    problems = check_report(report)
    if problems:  # a bug, not the user's: say what is missing rather than write it
        raise RuntimeError("incomplete report: " + "; ".join(problems[:5]))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    plot(report, plot_path)
    print(markdown_table(report))
    print(f"\nreport written: {json_path}, {plot_path} ({report['wall_seconds']:.0f} s)")
    return 0
