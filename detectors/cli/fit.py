"""``gradsentry fit``: model + in-distribution data + challenge specs -> bundle (+ report)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from detectors.bundle import BundleExistsError, model_fingerprint
from detectors.cli.common import (
    USER_ERRORS,
    CliError,
    check_input_shape,
    load_labelled,
    load_model,
    parse_challenges,
)
from detectors.detector import CLASSIFIERS, STRATEGIES
from detectors.features import DEFAULT_LOSSES
from detectors.fitting import fit_detector, write_bundle
from detectors.losses import available_losses
from detectors.precision import MODEL_DTYPES, cast_model
from detectors.setcache import SetCache
from detectors.views import VIEWS

DEFAULT_CHALLENGES = [
    "fgsm:eps=0.2",
    "corruption:type=gaussian_noise,severity=3",
    "ood:source=uniform",
]

__all__ = ["USER_ERRORS", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this subcommand; sets ``run``."""
    p.add_argument("--model", required=True, help="package.module:factory building the classifier")
    p.add_argument("--weights", help="state dict file (loaded with weights_only=True)")
    p.add_argument("--data", required=True, help="clean in-distribution data: npz or image folder")
    p.add_argument(
        "--stats-data",
        help="clean labelled data for the feature statistics "
        "(default: half of --data; the other half fits H)",
    )
    p.add_argument(
        "--challenge",
        action="append",
        default=None,
        metavar="SPEC",
        help=f"challenge to fit against (repeatable; default {DEFAULT_CHALLENGES})",
    )
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--loss",
        action="append",
        choices=available_losses(),
        default=None,
        help="confounding loss(es) whose gradient norms are features (default all_ones)",
    )
    p.add_argument(
        "--view",
        action="append",
        choices=sorted(VIEWS),
        default=None,
        help="squeezed view whose prediction shift is a feature (repeatable; image models; "
        "one more forward pass per view per request; the demos use median)",
    )
    p.add_argument("--classifier", choices=sorted(CLASSIFIERS), default="logistic")
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="per_kind")
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--model-dtype",
        choices=MODEL_DTYPES,
        default="float32",
        help="dtype the model runs in while the features are computed (serve the bundle "
        "with the same model_dtype; the probe sums in float32 either way)",
    )
    p.add_argument("--cache", type=Path, help="directory caching generated challenge sets")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise BundleExistsError(f"{args.out} exists; pass --overwrite to replace it")
    if not 0 < args.target_fpr < 1:
        raise CliError(f"--target-fpr must be in (0, 1), got {args.target_fpr}")
    challenges = parse_challenges(args.challenge or DEFAULT_CHALLENGES)
    model = load_model(args.model, args.weights, args.device)
    # The fingerprint of the model as stored: a server checks it before its own cast.
    fingerprint = model_fingerprint(model)
    # Attacks run on the float32 original (attack libraries feed float32); the features are
    # computed at the dtype the model will be served at.
    challenge_model = copy.deepcopy(model) if args.model_dtype != "float32" else model
    cast_model(model, args.model_dtype)
    images, labels = load_labelled(args.data, "--data")
    check_input_shape(model, images, "--data")
    stats = load_labelled(args.stats_data, "--stats-data") if args.stats_data else (None, None)
    result = fit_detector(
        model,
        images,
        labels,
        challenges,
        stats_images=stats[0],
        stats_labels=stats[1],
        losses=args.loss or DEFAULT_LOSSES,
        views=args.view or (),
        classifier=args.classifier,
        strategy=args.strategy,
        target_fpr=args.target_fpr,
        seed=args.seed,
        progress=not args.quiet,
        cache=SetCache(args.cache),
        challenge_model=challenge_model,
    )
    result.summary["data"] = str(args.data)
    path = write_bundle(result, model, args.out, overwrite=args.overwrite, fingerprint=fingerprint)
    det = result.detector
    print(
        f"bundle written to {path}: {det.strategy} {det.classifier} H on "
        f"{result.extractor.schema.__len__()} features; threshold {det.threshold_:.4f} "
        f"(target FPR {det.target_fpr:.1%}, calibration FPR {det.calibration_fpr_:.1%})"
    )
    return 0
