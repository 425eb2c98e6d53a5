"""``gradsentry serve``: start the sidecar from a config file and GRADSENTRY_* variables.

Importing this module is light (no torch, no gRPC): with the model in a worker process the
worker is started right after the config is read, so that its imports overlap the server's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from detectors.errors import ModelLoadError
from service.config import ConfigError, load_config
from service.engine.worker_launch import prestart
from service.transport import grpc_defaults as transport

__all__ = ["USER_ERRORS", "add_arguments", "run"]

log = logging.getLogger("service.cli")


#: A bad config, model or bundle: one line, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelLoadError)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``serve``; sets ``run``."""
    p.add_argument("--config", metavar="FILE", help="YAML config; GRADSENTRY_* override it")
    p.add_argument(
        "--rest-port",
        metavar="PORT",
        type=int,
        help="also serve the Open Inference Protocol over HTTP/REST on PORT (config: "
        "rest_enabled, rest_port; 0 picks a free port)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT and the drain are done."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = load_config(args.config)  # light: YAML and the environment
    if args.rest_port is not None:
        config = dataclasses.replace(config, rest_enabled=True, rest_port=args.rest_port)
    if config.model_worker == "process":
        # The worker's imports (torch, the model, onnxruntime) overlap this process's own.
        prestart()
    # gRPC loads only now, and only when serving (torch only with an inline model).
    from service.server import serve

    log.info("gRPC core experiments: %r", os.environ.get(transport.ENV, ""))
    serve(config)
    return 0
