"""``gradsentry serve``: start the sidecar from a config file and GRADSENTRY_* variables."""

from __future__ import annotations

import argparse
import logging
import os

from detectors.bundle import BundleError
from detectors.probe.registry import ProbeError
from service import transport
from service.config import ConfigError, load_config
from service.loader import ModelLoadError

__all__ = ["USER_ERRORS", "add_arguments", "run"]

log = logging.getLogger("service.cli")

#: A bad config, model or bundle: one line, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelLoadError, BundleError, ProbeError)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``serve``; sets ``run``."""
    p.add_argument("--config", metavar="FILE", help="YAML config; GRADSENTRY_* override it")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT and the drain are done."""
    from service.server import serve  # grpc start-up only when serving

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info("gRPC core experiments: %r", os.environ.get(transport.ENV, ""))
    serve(load_config(args.config))
    return 0
