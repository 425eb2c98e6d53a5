"""Operator switches of a real ``gradsentry serve``: reflection off, the metrics endpoint on
an address of its own, and gRPC's own refusals counted."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from tests.servers import WAIT, serve_process, tensor_request

LIMIT = 100_000  # max_message_bytes


def test_reflection_off_metrics_apart_and_grpc_refusals_counted(tmp_path: Path) -> None:
    settings = {
        "model_worker": "inline",
        "reflection": False,
        "metrics_host": "127.0.0.2",  # loopback too, but not the gRPC address
        "max_message_bytes": LIMIT,
    }
    with (
        serve_process(tmp_path, **settings) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        # Reflection is off: the service does not exist.
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                list_services=""
            )]), timeout=WAIT))  # fmt: skip
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # grpcurl, which lists OIP too with reflection on (test_reflection), says so.
        grpcurl = Path(sys.executable).parent / "grpcurl"
        done = subprocess.run(
            [str(grpcurl), "-plaintext", server.target, "list"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert done.returncode != 0 and "does not support the reflection API" in done.stderr

        # Metrics answer on their own address only.
        own = f"http://127.0.0.2:{server.metrics_port}/metrics"
        with urllib.request.urlopen(own, timeout=WAIT) as reply:
            text = reply.read().decode()
        assert "gradsentry_grpc_calls_started_total" in text
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)

        # A message over the limit is refused by gRPC before any handler: not in
        # gradsentry_requests_total, but in gRPC's own count.
        def counts() -> tuple[float, float]:
            with urllib.request.urlopen(own, timeout=WAIT) as reply:
                lines = reply.read().decode().splitlines()
            started = next(
                float(line.split()[-1])
                for line in lines
                if line.startswith("gradsentry_grpc_calls_started_total")
            )
            handled = sum(
                float(line.split()[-1])
                for line in lines
                if line.startswith("gradsentry_requests_total{")
            )
            return started, handled

        reliability = pb_grpc.ReliabilityStub(channel)
        reliability.Check(tensor_request(np.zeros((1, 28, 28), np.float32)), timeout=WAIT)
        started, handled = counts()
        big = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, data=bytes(2 * LIMIT)))
        with pytest.raises(grpc.RpcError) as info:
            reliability.Check(big, timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        started_after, handled_after = counts()
        assert started_after - started == 1  # no scrape is a gRPC call: only the refused one
        assert handled_after == handled
