"""Graceful drain of a real ``gradsentry serve`` process: SIGTERM with 150 calls in flight.

Health must turn NOT_SERVING, new calls must get UNAVAILABLE, every call the server had
accepted must get its full answer, and the process must exit 0 within its grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from detectors.sentry import Sentry
from service import transport
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
CALLS = 150
GRACE = 20.0
WAIT = 60.0  # generous: the suite shares 2 cores
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def queue_depth(metrics_port: int) -> float:
    """The server's ``gradsentry_queue_depth`` gauge, read from its metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "gradsentry_queue_depth":
            return float(family.samples[0].value)
    raise AssertionError("gradsentry_queue_depth is not exported")


def request(x: np.ndarray) -> pb.CheckRequest:
    """x float32 [1, 28, 28]."""
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=list(x.shape), data=x.astype("<f4").tobytes())
    return pb.CheckRequest(tensor=tensor, return_probabilities=True)


@pytest.fixture()
def server_process(
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], grpc.Channel, int]]:
    """``gradsentry serve --config FILE`` in its own process, SERVING, with its channel and
    metrics port. The config holds a batch back up to 5 s for company, so that SIGTERM
    lands while every call is queued."""
    port, metrics_port = free_port(), free_port()
    config = {
        "host": "127.0.0.1",
        "port": port,
        "metrics_port": metrics_port,
        "device": "cpu",
        "max_batch_size": 256,
        "max_delay_ms": 5000,
        "dispatch_when_idle": False,  # hold the batch even though the model is idle
        "queue_size": 512,
        "max_workers": 256,
        "grace_seconds": GRACE,
    }
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = (tmp_path / "server.log").open("wb")
    # No GRPC_EXPERIMENTS either: the process chooses its own transport (service.transport).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRADSENTRY_") and k != transport.ENV
    }
    env["OMP_NUM_THREADS"] = "1"  # one torch thread: the machine is shared
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "server did not become SERVING"
            time.sleep(0.1)
        yield proc, channel, metrics_port
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_sigterm_drains_every_accepted_call(server_process, samples, sentry: Sentry) -> None:
    proc, channel, metrics_port = server_process
    stub = pb_grpc.ReliabilityStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT)
    assert next(watch).status == SERVING

    images = samples[0].astype(np.float32) / 255.0
    x = np.stack([images[i % len(images)] for i in range(CALLS)])[:, None]  # [150, 1, 28, 28]
    calls = [stub.Check.future(request(x[i]), timeout=WAIT) for i in range(CALLS)]
    # Wait until the server has accepted and queued every call (or has started on them).
    deadline = time.monotonic() + WAIT
    while queue_depth(metrics_port) < CALLS and not any(call.done() for call in calls):
        assert time.monotonic() < deadline, "the calls never reached the queue"
        time.sleep(0.05)
    assert sum(not call.done() for call in calls) >= 100

    sigterm = time.monotonic()
    proc.send_signal(signal.SIGTERM)

    # Health turns NOT_SERVING (pushed to the watcher) ...
    assert next(watch).status == NOT_SERVING
    watch.cancel()
    # ... new calls are refused ...
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(request(x[0]), timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... and every accepted call gets its full answer: none lost.
    responses = [call.result() for call in calls]
    reference = sentry.check(torch.from_numpy(x))
    for i, response in enumerate(responses):
        assert response.predicted_class == int(reference.predicted[i])
        assert response.score == pytest.approx(float(reference.score[i]), abs=1e-6)
        np.testing.assert_allclose(response.probabilities, reference.probabilities[i], atol=1e-6)

    assert proc.wait(timeout=GRACE + WAIT) == 0
    assert time.monotonic() - sigterm < GRACE


def test_serve_chooses_its_grpc_transport(server_process, tmp_path: Path) -> None:
    """Started without GRPC_EXPERIMENTS, ``gradsentry serve`` sets its own before grpc
    loads (and serves on it: the fixture waited for SERVING)."""
    text = (tmp_path / "server.log").read_text()
    assert f"gRPC core experiments: {transport.SERVER_EXPERIMENTS!r}" in text, text
