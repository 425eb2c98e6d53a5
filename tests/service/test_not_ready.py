"""A real ``gradsentry serve`` called while it warms up: it already listens, health says
NOT_SERVING and Reliability calls get FAILED_PRECONDITION; then it turns SERVING and
answers. The model is the demo's, slowed down at first (``slow_model``)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from tests.servers import WAIT, spawn_serve, tensor_request

LISTENING = re.compile(r"listening on \S+:(\d+); warming up")
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def test_calls_before_ready_get_failed_precondition(tmp_path: Path) -> None:
    proc, log = spawn_serve(
        tmp_path, model_worker="inline", model_factory="tests.service.slow_model:build"
    )
    try:
        deadline = time.monotonic() + WAIT
        while not (found := LISTENING.search(log.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        x = np.zeros((1, 28, 28), np.float32)
        with grpc.insecure_channel(f"127.0.0.1:{found.group(1)}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.ReliabilityStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
            assert reply.status == NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(tensor_request(x), timeout=WAIT)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "still loading" in info.value.details()
            assert "gradsentry serving" not in log.read_text()  # still warming up: a real window
            while health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status != SERVING:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            assert stub.Check(tensor_request(x), timeout=WAIT).predicted_class in range(10)
    finally:
        proc.kill()
        proc.wait(WAIT)
