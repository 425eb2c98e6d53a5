"""Argument parsing and dispatch; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys
import warnings

from detectors.bundle import BundleError
from detectors.challenges import ChallengeError
from detectors.cli import bench, demo, evaluate, fit
from detectors.cli.common import CliError
from detectors.data import DataError
from detectors.probe.registry import ProbeError

COMMANDS = {"fit": fit, "eval": evaluate, "demo": demo, "bench": bench}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradsentry",
        description="Per-request reliability checks for image classifiers from "
        "confounding-gradient features.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    serve = sub.add_parser("serve", help="run the gRPC sidecar (not yet available)")
    serve.add_argument("--config", help="YAML config file")
    serve.set_defaults(run=_serve_not_yet)
    return parser


def _serve_not_yet(args: argparse.Namespace) -> int:
    print(
        "gradsentry serve: the gRPC sidecar is not part of this release yet; "
        "`gradsentry fit` / `gradsentry eval` work offline today.",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradsentry`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="art")
    try:
        return int(args.run(args) or 0)
    except (CliError, DataError, ChallengeError, BundleError, ProbeError) as exc:
        print(f"gradsentry {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradsentry {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
