"""The library's offline subcommands (``fit``, ``eval``, ``demo``, ``attack``, ``bench``),
by name.

Each lives in its own module and is imported only when chosen (``detectors.cli.commands``).
"""

from __future__ import annotations

import argparse
import sys

from detectors.cli.commands import Command, run
from detectors.cli.commands import build_parser as _build_parser

COMMANDS: dict[str, Command] = {
    "fit": Command("detectors.cli.fit", "fit the detector H and write a bundle"),
    "eval": Command("detectors.cli.evaluate", "evaluate a bundle against named challenge sets"),
    "demo": Command(
        "detectors.cli.demo", "rebuild or evaluate a bundled demo (MNIST digits, Fashion-MNIST)"
    ),
    "attack": Command(
        "detectors.cli.attack",
        "adaptive-attack report: PGD that knows the detector, against gradsentry and baselines",
    ),
    "bench": Command(
        "detectors.cli.bench", "measure probe cost against a forward pass, vmap and a loop"
    ),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The library's parser (``chosen``: the one command given its options)."""
    return _build_parser(COMMANDS, chosen)[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m detectors.cli ARGS``: parse, run the chosen subcommand, return its exit code."""
    return run(COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
