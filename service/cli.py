"""The ``gradsentry`` console script: the library's subcommands plus ``serve``, ``check``
and ``health``, each imported only when chosen (``detectors.cli.commands``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from detectors.cli.commands import Command, build_parser, run
from detectors.cli.main import COMMANDS as LIBRARY_COMMANDS
from service.transport import grpc_defaults as transport

log = logging.getLogger("service.cli")

COMMANDS: dict[str, Command] = {
    **LIBRARY_COMMANDS,
    "serve": Command(
        "service.serve_cli", "run the gRPC sidecar (the bundled demo unless configured)"
    ),
    "check": Command(
        "service.check", "score PNG/JPEG/.npy files (or --demo inputs) on a running sidecar"
    ),
    "health": Command(
        "service.health", "exit 0 only when a sidecar's gRPC health service reports SERVING"
    ),
}


def parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The whole command line's parser (``chosen``: the one command given its options)."""
    return build_parser(COMMANDS, chosen)[0]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed the way the console script parses it (its command's module imported)."""
    words = list(argv)
    return parser(words[0] if words else None).parse_args(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradsentry`` console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    # Before anything imports grpc, which reads its experiments once, at import.
    if words[:1] == ["serve"] and transport.apply_server_defaults() is None:
        log.warning("grpc was imported before serve started: gRPC core keeps its own defaults")
    return run(COMMANDS, words)


if __name__ == "__main__":
    sys.exit(main())
