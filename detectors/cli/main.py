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
    return parser


#: Errors that are the user's to fix: one line, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (
    CliError,
    DataError,
    ChallengeError,
    BundleError,
    ProbeError,
)


def main(
    argv: list[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    user_errors: tuple[type[Exception], ...] = USER_ERRORS,
) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit code.

    The service package passes a parser extended with its own subcommands (and their
    error types), so the library never imports the service.
    """
    args = (parser or build_parser()).parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="art")
    try:
        return int(args.run(args) or 0)
    except user_errors as exc:
        print(f"gradsentry {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradsentry {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
