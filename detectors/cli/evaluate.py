"""``gradsentry eval``: bundle + model + named challenge sets -> markdown/PNG/JSON report."""

from __future__ import annotations

import argparse
from pathlib import Path

from detectors.challenges import parse_spec
from detectors.cli.common import (
    USER_ERRORS,
    CliError,
    check_input_shape,
    load_labelled,
    load_model,
)
from detectors.evaluate.run import BASELINES, EvalSet, evaluate
from detectors.sentry import Sentry
from detectors.setcache import SetCache

__all__ = ["USER_ERRORS", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this subcommand; sets ``run``."""
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--model", required=True, help="package.module:factory building the classifier")
    p.add_argument("--weights", help="state dict file (loaded with weights_only=True)")
    p.add_argument("--data", required=True, help="clean labelled test data: npz or image folder")
    p.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="[NAME=]SPEC",
        help="a challenge set, e.g. pgd=pgd:eps=0.3 or ood:source=skimage_patches",
    )
    p.add_argument("--baseline-data", help="clean labelled data to fit Mahalanobis, KNN and ViM on")
    p.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated baselines")
    p.add_argument("--report", required=True, type=Path, help="directory for report.md + roc.png")
    p.add_argument("--json", type=Path, help="machine-readable report path")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", type=Path, help="directory caching generated challenge sets")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def parse_sets(items: list[str]) -> list[EvalSet]:
    """``NAME=SPEC`` or bare ``SPEC`` (named after the spec); names must be unique."""
    sets, names = [], set()
    for item in items:
        name, spec = item.split("=", 1) if "=" in item.split(":", 1)[0] else (None, item)
        challenge = parse_spec(spec)
        name = name or challenge.spec
        if name in names:
            raise CliError(f"set name {name!r} is given twice")
        names.add(name)
        sets.append(EvalSet(name, challenge))
    return sets


def run(args: argparse.Namespace) -> int:
    sets = parse_sets(args.set)
    baselines = [b for b in args.baselines.split(",") if b]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise CliError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    model = load_model(args.model, args.weights, args.device)
    images, labels = load_labelled(args.data, "--data")
    check_input_shape(model, images, "--data")
    sentry = Sentry.load(model, args.bundle)
    fit = load_labelled(args.baseline_data, "--baseline-data") if args.baseline_data else None
    report = evaluate(
        sentry,
        images,
        labels,
        sets,
        baseline_fit=fit,
        baselines=baselines,
        seed=args.seed,
        progress=not args.quiet,
        cache=SetCache(args.cache),
        meta={"bundle": str(args.bundle), "data": str(args.data), "n_clean": len(images)},
    )
    files = report.write(args.report, args.json)
    print(f"report written: {files.markdown}, {files.roc}, {files.json}")
    return 0
