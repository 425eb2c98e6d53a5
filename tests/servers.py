"""The bundled demo server, started in the test process: 127.0.0.1, free gRPC and metrics
ports, CPU, one torch thread; ``GRADSENTRY_*`` overrides on top."""

from __future__ import annotations

import time
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


def calls_ended(running: SentryServer, method: str, code: str) -> float:
    """Reliability ``method`` calls the server has finished with status ``code``."""
    labels = {"service": "gradsentry.v1.Reliability", "method": method, "code": code}
    return running.metrics.registry.get_sample_value("gradsentry_requests_total", labels) or 0.0


def wait_calls_ended(running: SentryServer, method: str, code: str, count: float) -> float:
    """``calls_ended`` once it reaches ``count`` (the server records a call as it ends it,
    which a client may see a moment earlier), or after 5 s."""
    deadline = time.monotonic() + 5
    while (n := calls_ended(running, method, code)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return n
