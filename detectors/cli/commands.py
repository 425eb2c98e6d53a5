"""The command-line's subcommand registry: each subcommand is imported only when chosen.

A ``Command`` names the module that implements it and the one line ``--help`` shows for
it. ``gradsentry --help`` builds the top-level parser from these lines alone, so it imports
nothing heavy; ``gradsentry NAME ...`` imports NAME's module and nothing else, and that
module's ``add_arguments(parser)`` adds its options and sets ``run``. Errors listed in the
module's ``USER_ERRORS`` are the user's to fix: one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

PROG = "gradsentry"
DESCRIPTION = (
    "Per-request reliability checks for image classifiers from confounding-gradient features."
)


@dataclass(frozen=True)
class Command:
    """One subcommand: ``module`` (dotted path) and the ``help`` line listed for it.

    The module provides ``add_arguments(parser) -> None`` (adds options and sets
    ``run=callable(args) -> int``) and may provide ``USER_ERRORS``: exception types that
    print one line and exit 2.
    """

    module: str
    help: str
    # The command's --help text beside ``help`` (``None``: the same line).
    description: str | None = None

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def build_parser(
    commands: Mapping[str, Command], chosen: str | None = None
) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    """The parser with every command listed; only ``chosen`` (if any) is imported and gets
    its options. Returns the parser and the chosen command's module."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    module = None
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.description or command.help)
        if name == chosen:
            module = command.load()
            module.add_arguments(p)
    return parser, module


def run(
    commands: Mapping[str, Command],
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` when None), run the chosen command, return its exit
    code. ``user_errors`` are caught for every command, beside each module's own."""
    words = sys.argv[1:] if argv is None else list(argv)
    chosen = words[0] if words and words[0] in commands else None
    parser, module = build_parser(commands, chosen)
    args = parser.parse_args(words)
    caught = (*user_errors, *getattr(module, "USER_ERRORS", ()))
    try:
        return int(args.run(args) or 0)
    except caught as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
