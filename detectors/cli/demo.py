"""``gradsentry demo build|report [--dataset mnist|fashion]``: the bundled demos.

``build`` trains the data set's classifier on its fixed classifier split, fits H on the
detector split against the data set's fit challenges and writes the model, the bundle
and a few sample images into the package; ``report`` evaluates that bundle on the test
split against every attack, every corruption at severities 1/3/5 and the OOD sets.
The data sets are a registry (``detectors.demo.datasets``): MNIST digits (the default)
and Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from detectors.challenges import parse_spec
from detectors.cli.common import USER_ERRORS, CliError
from detectors.demo.bars import format_bars
from detectors.demo.datasets import DemoDataset, datasets
from detectors.demo.train import accuracy
from detectors.evaluate.run import EvalSet, evaluate
from detectors.fitting import fit_detector, write_bundle
from detectors.sentry import Sentry
from detectors.setcache import SetCache

#: What ``build`` writes into the artifacts folder.
ARTIFACT_PIECES: tuple[str, ...] = ("model.pt", "bundle", "samples.npz")

__all__ = ["USER_ERRORS", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of this subcommand; sets ``run``."""
    p.add_argument("action", choices=["build", "report"])
    p.add_argument("--dataset", choices=sorted(datasets()), default="mnist")
    p.add_argument(
        "--data",
        type=Path,
        help="mnist: the 10,000-digit npz (default ../shared/data/mnist10k.npz); fashion: "
        "the folder of its idx .gz files (default /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--artifacts", type=Path, help="where build writes (default: the package's own)")
    p.add_argument(
        "--report", type=Path, help="where report writes (default docs/demo, docs/fashion)"
    )
    p.add_argument("--cache", type=Path, default=Path(".cache/sets"))
    p.add_argument(
        "--limit",
        type=int,
        help="evaluate on the first N test images only (fashion's committed report: 2000)",
    )
    p.add_argument(
        "--keep-model",
        action="store_true",
        help="build: refit only the detector, on the committed classifier",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    entry = datasets()[args.dataset]
    args.data = args.data or entry.default_data
    args.artifacts = args.artifacts or entry.artifacts
    args.report = args.report or entry.report_dir
    if args.limit is None:
        args.limit = entry.test_limit
    if not args.data.exists():
        raise CliError(f"{entry.title} data not found at {args.data}; pass --data (README: Data)")
    try:
        splits = entry.load_splits(args.data)
    except (OSError, ValueError) as exc:
        raise CliError(f"{entry.title} data at {args.data}: {exc}") from None
    if args.action == "build":
        return build(entry, splits, args)
    return report(entry, splits, args)


def build(entry: DemoDataset, splits: dict, args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.keep_model:
        model = entry.load_model(args.artifacts)
    else:
        # One fixed thread: the trained weights then do not depend on the machine's cores (and one
        # thread wastes nothing to synchronisation on a busy machine).
        with _threads(1):
            model = entry.train(splits["classifier"], progress)
    test_acc = accuracy(model, splits["test"])
    det = splits["detector"]
    result = fit_detector(
        model,
        det.images,
        det.labels,
        [parse_spec(s) for s in entry.fit_challenges],
        attribution_challenges=[parse_spec(s) for s in entry.attribution_challenges],
        attribution_limit=entry.attribution_limit,
        stats_images=splits["classifier"].images[: entry.stats_limit],
        stats_labels=splits["classifier"].labels[: entry.stats_limit],
        views=entry.views,
        progress=progress,
        cache=SetCache(args.cache),
    )
    result.summary["data"] = entry.detector_data
    result.metrics["classifier_test_accuracy"] = test_acc
    # Build everything in a temporary directory, then swap the three pieces in: a failed
    # build leaves the committed artifacts untouched. Only those pieces are replaced (the
    # MNIST demo's folder holds the other data sets' folders too).
    args.artifacts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".artifacts-", dir=args.artifacts))
    try:
        torch.save(model.state_dict(), tmp / "model.pt")
        write_bundle(result, model, tmp / "bundle")
        test = splits["test"]
        np.savez_compressed(
            tmp / "samples.npz",
            images=(test.images[:64, 0] * 255).round().astype(np.uint8),
            labels=test.labels[:64].astype(np.uint8),
        )
        for piece in ARTIFACT_PIECES:
            target = args.artifacts / piece
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (tmp / piece).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"demo rebuilt in {args.artifacts}: test accuracy {test_acc:.4f}, threshold "
        f"{result.detector.threshold_:.4f}"
    )
    return 0


def report(entry: DemoDataset, splits: dict, args: argparse.Namespace) -> int:
    model = entry.load_model(args.artifacts)
    sentry = Sentry.load(model, args.artifacts / "bundle")
    test = splits["test"]
    n = min(args.limit or len(test.images), len(test.images))
    sets = [EvalSet(name, parse_spec(spec)) for name, spec in entry.report_sets()]
    rep = evaluate(
        sentry,
        test.images[:n],
        test.labels[:n],
        sets,
        baseline_fit=(splits["classifier"].images, splits["classifier"].labels),
        progress=not args.quiet,
        cache=SetCache(args.cache),
        meta={
            "model": entry.model_name,
            "test images": n,
            "fit challenges": ", ".join(entry.fit_challenges),
        },
        fpr_images=test.images if n < len(test.images) else None,
    )
    files = rep.write(args.report)
    table = format_bars(entry.check_bars(rep.to_dict()))
    (args.report / "bars.md").write_text(f"# {entry.title} bars\n\n{table}\n", encoding="utf-8")
    print(f"demo report written: {files.markdown}\n\n{table}")
    return 0


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
