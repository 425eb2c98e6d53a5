"""The ``gradsentry`` console script: library subcommands plus ``serve``, ``check``, ``health``."""

from __future__ import annotations

import argparse
import logging
import sys

from detectors.cli.main import USER_ERRORS, build_parser
from detectors.cli.main import main as run_cli
from service import check, health
from service.config import ConfigError, load_config
from service.loader import ModelLoadError


def _serve(args: argparse.Namespace) -> int:
    from service.server import serve  # grpc start-up only when serving

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(load_config(args.config))
    return 0


def parser() -> argparse.ArgumentParser:
    """The library's parser with ``serve``, ``check`` and ``health`` added."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.add_parser(
        "serve", help="run the gRPC sidecar (the bundled demo unless configured)"
    )
    serve.add_argument("--config", metavar="FILE", help="YAML config; GRADSENTRY_* override it")
    serve.set_defaults(run=_serve)
    check.add_parser(sub, "check")
    health.add_parser(sub, "health")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradsentry`` console script."""
    return run_cli(argv, parser(), (*USER_ERRORS, ConfigError, ModelLoadError, check.CheckError))


if __name__ == "__main__":
    sys.exit(main())
