"""The ``gradsentry`` console script: library subcommands plus ``serve``, ``check``, ``health``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from detectors.cli.main import USER_ERRORS, build_parser
from detectors.cli.main import main as run_cli
from service import transport
from service.config import ConfigError, load_config
from service.loader import ModelLoadError

log = logging.getLogger("service.cli")


def _serve(args: argparse.Namespace) -> int:
    from service.server import serve  # grpc start-up only when serving

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info("gRPC core experiments: %r", os.environ.get(transport.ENV, ""))
    serve(load_config(args.config))
    return 0


def parser() -> argparse.ArgumentParser:
    """The library's parser with ``serve``, ``check`` and ``health`` added."""
    from service import check, health  # import grpc: see main()

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradsentry`` console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    # Before anything imports grpc, which reads its experiments once, at import.
    if words[:1] == ["serve"] and transport.apply_server_defaults() is None:
        log.warning("grpc was imported before serve started: gRPC core keeps its own defaults")
    from service import check

    return run_cli(words, parser(), (*USER_ERRORS, ConfigError, ModelLoadError, check.CheckError))


if __name__ == "__main__":
    sys.exit(main())
