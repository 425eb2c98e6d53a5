"""``gradsentry demo build`` / ``gradsentry demo report``: the bundled MNIST demo.

``build`` trains the demo CNN on the fixed classifier split, fits H on the detector
split against the demo's fit challenges and writes the model, the bundle and a few
sample digits into the package; ``report`` evaluates that bundle on the 2,000 test
digits against every attack, every corruption at severities 1/3/5 and four OOD sets.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from detectors.challenges import parse_spec
from detectors.cli.common import USER_ERRORS, CliError
from detectors.demo import ARTIFACTS, load_demo_model
from detectors.demo.bars import check_bars, format_bars
from detectors.demo.sets import FIT_CHALLENGES, report_sets
from detectors.demo.train import accuracy, load_mnist_npz, train_classifier
from detectors.evaluate.run import EvalSet, evaluate
from detectors.fitting import fit_detector, write_bundle
from detectors.sentry import Sentry
from detectors.setcache import SetCache

DEFAULT_DATA = Path("../shared/data/mnist10k.npz")

__all__ = ["USER_ERRORS", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this subcommand; sets ``run``."""
    p.add_argument("action", choices=["build", "report"])
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="the 10,000-digit MNIST npz (images uint8 [N,28,28], labels)",
    )
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS, help="where build writes")
    p.add_argument("--report", type=Path, default=Path("docs/demo"), help="where report writes")
    p.add_argument("--cache", type=Path, default=Path(".cache/sets"))
    p.add_argument("--limit", type=int, help="evaluate on the first N test digits only")
    p.add_argument(
        "--keep-model",
        action="store_true",
        help="build: refit only the detector, on the committed classifier",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.data.is_file():
        raise CliError(
            f"MNIST data not found at {args.data}; pass --data (README: how to rebuild it)"
        )
    splits = load_mnist_npz(str(args.data))
    if args.action == "build":
        return build(splits, args)
    return report(splits, args)


def build(splits: dict, args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.keep_model:
        model = load_demo_model(args.artifacts)
    else:
        model = train_classifier(splits["classifier"], progress=progress)
    test_acc = accuracy(model, splits["test"])
    det = splits["detector"]
    result = fit_detector(
        model,
        det.images,
        det.labels,
        [parse_spec(s) for s in FIT_CHALLENGES],
        stats_images=splits["classifier"].images,
        stats_labels=splits["classifier"].labels,
        progress=progress,
        cache=SetCache(args.cache),
    )
    result.summary["data"] = "MNIST digits 6,000-7,999 of the fixed split"
    result.metrics["classifier_test_accuracy"] = test_acc
    # Build everything in a temporary directory, then swap it in: a failed build
    # leaves the committed artifacts untouched.
    args.artifacts.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".artifacts-", dir=args.artifacts.parent))
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        write_bundle(result, model, tmp / "bundle")
        test = splits["test"]
        np.savez_compressed(
            tmp / "samples.npz",
            images=(test.images[:64, 0] * 255).round().astype(np.uint8),
            labels=test.labels[:64].astype(np.uint8),
        )
        if args.artifacts.exists():
            shutil.rmtree(args.artifacts)
        tmp.rename(args.artifacts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"demo rebuilt in {args.artifacts}: test accuracy {test_acc:.4f}, threshold "
        f"{result.detector.threshold_:.4f}"
    )
    return 0


def report(splits: dict, args: argparse.Namespace) -> int:
    model = load_demo_model(args.artifacts)
    sentry = Sentry.load(model, args.artifacts / "bundle")
    test = splits["test"]
    n = args.limit or len(test.images)
    sets = [EvalSet(name, parse_spec(spec)) for name, spec in report_sets()]
    rep = evaluate(
        sentry,
        test.images[:n],
        test.labels[:n],
        sets,
        baseline_fit=(splits["classifier"].images, splits["classifier"].labels),
        progress=not args.quiet,
        cache=SetCache(args.cache),
        meta={
            "model": "demo MnistCNN",
            "test images": n,
            "fit challenges": ", ".join(FIT_CHALLENGES),
        },
    )
    files = rep.write(args.report)
    table = format_bars(check_bars(rep.to_dict()))
    (args.report / "bars.md").write_text(f"# Demo bars\n\n{table}\n", encoding="utf-8")
    print(f"demo report written: {files.markdown}\n\n{table}")
    return 0
