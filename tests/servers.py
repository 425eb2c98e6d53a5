"""The bundled demo server, started in the test process: 127.0.0.1, free gRPC and metrics
ports, CPU, one torch thread; ``GRADSENTRY_*`` overrides on top."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from service.config import load_config
from service.server import SentryServer, create_server


@contextmanager
def demo_server(**environ: str) -> Iterator[tuple[SentryServer, int]]:
    """A started, warmed-up server and its gRPC port; stopped on exit."""
    torch.set_num_threads(1)
    config = load_config(
        environ={
            "GRADSENTRY_PORT": "0",
            "GRADSENTRY_METRICS_PORT": "0",
            "GRADSENTRY_DEVICE": "cpu",
            "GRADSENTRY_TORCH_THREADS": "1",
            **environ,
        }
    )
    running, port = create_server(config)
    try:
        yield running, port
    finally:
        running.stop(None).wait(10)
