"""The health probe (``gradsentry health`` / ``python -m service.health``) against a real
gRPC health service: exit 0 only for SERVING, 1 for everything else."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import health as probe
from service.cli import parse_args

RELIABILITY = "gradsentry.v1.Reliability"


@pytest.fixture()
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    """A gRPC server with only the standard health service, on a free port."""
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serving_exits_zero(
    health_server: tuple[health.HealthServicer, int], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(RELIABILITY, health_pb2.HealthCheckResponse.SERVING)
    assert probe.main(["--target", f"127.0.0.1:{port}"]) == 0
    assert probe.main(["--address", f"127.0.0.1:{port}", "--service", RELIABILITY]) == 0
    assert capsys.readouterr().out.splitlines() == ["SERVING", "SERVING"]


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING"),
        (health_pb2.HealthCheckResponse.UNKNOWN, "UNKNOWN"),
    ],
)
def test_anything_but_serving_exits_one(
    health_server: tuple[health.HealthServicer, int],
    capsys: pytest.CaptureFixture[str],
    status: int,
    shown: str,
) -> None:
    servicer, port = health_server
    servicer.set("", status)
    assert probe.main(["--target", f"127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().out.strip() == f"unhealthy: 127.0.0.1:{port} reports {shown}"


def test_draining_server_exits_one(health_server: tuple[health.HealthServicer, int]) -> None:
    """What the server does on SIGTERM: every service turns NOT_SERVING."""
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.enter_graceful_shutdown()
    assert probe.main(["--target", f"127.0.0.1:{port}"]) == 1


def test_unknown_service_exits_one(
    health_server: tuple[health.HealthServicer, int], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe.main(["--target", f"127.0.0.1:{port}", "--service", "no.Such"]) == 1
    assert "SERVICE_UNKNOWN" in capsys.readouterr().out


def test_unreachable_server_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    assert probe.main(["--target", f"127.0.0.1:{port}", "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unhealthy: UNAVAILABLE") or err.startswith("unhealthy: DEADLINE")


def test_default_target_follows_gradsentry_port(
    health_server: tuple[health.HealthServicer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside the container the probe needs no flags: it asks the server's own port."""
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe.default_target({}) == "127.0.0.1:50051"
    monkeypatch.setenv("GRADSENTRY_PORT", str(port))
    assert probe.main([]) == 0


@pytest.mark.parametrize("value", ["http", "0", "70000", "-1"])
def test_bad_gradsentry_port_exits_one(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRADSENTRY_PORT", value)
    assert probe.main([]) == 1
    assert "GRADSENTRY_PORT" in capsys.readouterr().err


def test_cert_without_key_exits_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe.main(["--target", "127.0.0.1:1", "--cert", "client.pem"]) == 1
    assert "--cert and --key go together" in capsys.readouterr().err


def test_gradsentry_health_subcommand(health_server: tuple[health.HealthServicer, int]) -> None:
    """The console script's ``health`` is the same probe."""
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    args = parse_args(["health", "--target", f"127.0.0.1:{port}"])
    assert args.run(args) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert args.run(args) == 1


def test_module_entry_point_does_not_import_torch() -> None:
    """The container's HEALTHCHECK runs every few seconds: it must stay light."""
    code = "import sys, service.health; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
