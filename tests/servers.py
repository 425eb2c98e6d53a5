"""Real demo servers for the tests: in the test process (``demo_server``) or as a
``gradsentry serve`` process (``serve_process``); both on 127.0.0.1 port 0, CPU, one torch
thread. Shared request helpers and the one ``WAIT`` bound."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service.config import load_config
from service.server import SentryServer, create_server
from service.transport import grpc_defaults as transport

RELIABILITY = "gradsentry.v1.Reliability"

# Tolerance policy for a server's answers against an in-process reference (Sentry.check on
# the inputs as one unpadded batch). The server pads a batch smaller than min_rows with
# copies of its first input (service.engine.pipeline), and BLAS/oneDNN sum in another order for
# another batch shape: logits differ in the last bits, and features that cancel (the
# predicted-class gradient when the softmax is near one-hot) amplify that to ~1e-4
# relative, on any thread count. The bounds leave 10x margin on that; scores and
# probabilities pass through a sigmoid / softmax and move far less. Answers of one server
# compared with each other, or padded references, are held to float rounding instead.
FEATURE_RTOL, FEATURE_ATOL = 1e-3, 1e-9
SCORE_ATOL = 1e-5  # scores and probabilities are in [0, 1]


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
    which a client may see a moment earlier; on a loaded machine, seconds earlier), or
    after ``WAIT``."""
    deadline = time.monotonic() + WAIT
    while (n := calls_ended(running, method, code)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


# --- `gradsentry serve` in a process of its own -------------------------------------------

WAIT = 60.0  # bound of every wait in the service tests: generous, the suite shares 2 cores
ROOT = Path(__file__).resolve().parents[1]
_SERVING_LINE = re.compile(r"gradsentry serving \S+ on \S+:(\d+)")
_METRICS_LINE = re.compile(r"metrics on http://\S+:(\d+)/metrics")


def tensor_request(x: np.ndarray, **options: bool) -> pb.CheckRequest:
    """x float32 [1, 28, 28] (or [28, 28]) -> a CheckRequest with a FLOAT32 tensor."""
    x = np.asarray(x, dtype="<f4").reshape(1, 28, 28)
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=list(x.shape), data=x.tobytes())
    return pb.CheckRequest(tensor=tensor, **options)


@dataclass
class ServerProcess:
    """A running ``gradsentry serve``: its process, ports (read from its own log: it binds
    port 0, so no port is picked here and reused there) and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the server's /metrics (0 when the series does not exist)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=WAIT) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def calls_ended(self, method: str, code: str, service: str = RELIABILITY) -> float:
        """Calls of ``service``/``method`` the server has finished with status ``code``."""
        return self.metric("gradsentry_requests_total", service=service, method=method, code=code)

    def wait_calls_ended(
        self, method: str, code: str, count: float, service: str = RELIABILITY
    ) -> float:
        """``calls_ended`` once it reaches ``count`` (the server records a call as it ends
        it, which its client may see a moment earlier), or after 5 s."""
        deadline = time.monotonic() + 5
        while (n := self.calls_ended(method, code, service)) < count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return n


def server_env() -> dict[str, str]:
    """The test's environment without GRADSENTRY_* / GRPC_EXPERIMENTS / GRPC_VERBOSITY (the
    process chooses its own), one torch thread."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRADSENTRY_") and k not in (transport.ENV, transport.VERBOSITY_ENV)
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_config(directory: Path, **config: Any) -> Path:
    """A YAML config in ``directory``: 127.0.0.1, ports 0, CPU, then ``config``."""
    values = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "device": "cpu", **config}
    path = directory / "server.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def spawn_serve(directory: Path, **config: Any) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``python -m service.cli serve --config FILE`` with ``config`` (not waiting for
    anything); the process and the file its output goes to."""
    path = write_config(directory, **config)
    log_path = directory / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(path)],
            cwd=ROOT,
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, log_path


@contextmanager
def serve_process(directory: Path, **config: Any) -> Iterator[ServerProcess]:
    """``spawn_serve``, SERVING; killed on exit if still running."""
    proc, log_path = spawn_serve(directory, **config)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            served, metrics = _SERVING_LINE.search(text), _METRICS_LINE.search(text)
            if served and metrics:
                break
            assert proc.poll() is None, text
            assert time.monotonic() < deadline, "the server did not start:\n" + text
            time.sleep(0.05)
        yield ServerProcess(proc, int(served.group(1)), int(metrics.group(1)), log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
