"""Start-up and graceful stop of a separate real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detectors.demo.model import build_model
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import load_config
from service.server import create_server


def test_stop_reports_not_serving_and_refuses_new_calls() -> None:
    torch.set_num_threads(1)
    environ = {"GRADSENTRY_PORT": "0", "GRADSENTRY_METRICS_PORT": "0"}
    running, port = create_server(load_config(environ=environ))
    x = np.zeros((1, 28, 28), np.float32)
    request = pb.CheckRequest(
        tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=x.tobytes())
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ReliabilityStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(request, timeout=30).verdict in (pb.RELIABLE, pb.FLAGGED)
        # Drain: health flips to NOT_SERVING and new Reliability calls get UNAVAILABLE
        # while the grace period still lets the transport answer.
        running.begin_drain()
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in info.value.details()
        assert running.stop(1.0).wait(5)


def test_create_server_fails_loudly_on_a_mismatched_bundle(tmp_path) -> None:
    # Weights of another model: the bundle's fingerprint check refuses to serve.
    torch.manual_seed(0)
    weights = tmp_path / "other.pt"
    torch.save(build_model().state_dict(), weights)
    config = load_config(environ={"GRADSENTRY_PORT": "0", "GRADSENTRY_MODEL_WEIGHTS": str(weights)})
    with pytest.raises(ValueError, match="bundle was fitted for model"):
        create_server(config)
