"""The server process's gRPC transport: core experiments (each in a fresh interpreter: grpc
reads them once, at import) and the event loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from service.transport import grpc_defaults as transport
from tests.servers import serve_process

ROOT = Path(__file__).resolve().parents[2]


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` from the repository, without GRPC_EXPERIMENTS unless given."""
    base = {k: v for k, v in os.environ.items() if k != transport.ENV}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_the_default_is_set_before_grpc_loads_and_grpc_knows_it() -> None:
    out = run(
        "from service.transport import grpc_defaults as transport; "
        "print(transport.apply_server_defaults()); "
        "import os, grpc; print(os.environ['GRPC_EXPERIMENTS'])",
        GRPC_VERBOSITY="INFO",  # so that a warning about the experiment would show
    )
    assert out.stdout.split() == [transport.SERVER_EXPERIMENTS] * 2
    # A name grpc does not know is logged and ignored: after an upgrade, re-measure.
    assert "Unknown experiment" not in out.stderr, out.stderr


def test_an_operator_value_wins_even_empty() -> None:
    code = (
        "from service.transport import grpc_defaults as transport; "
        "print(repr(transport.apply_server_defaults()))"
    )
    assert run(code, GRPC_EXPERIMENTS="").stdout.strip() == "''"
    assert run(code, GRPC_EXPERIMENTS="-tcp_frame_size_tuning").stdout.strip() == (
        "'-tcp_frame_size_tuning'"
    )


def test_too_late_once_grpc_is_imported_and_nothing_changes() -> None:
    out = run(
        "import grpc, os; from service.transport import grpc_defaults as transport; "
        "print(transport.apply_server_defaults(), os.environ.get('GRPC_EXPERIMENTS'))"
    )
    assert out.stdout.split() == ["None", "None"]


def cli_help(command: str, before: str = "", after: str = "") -> str:
    """Code running ``gradsentry COMMAND --help`` in-process, between ``before`` and
    ``after`` (lines)."""
    return (
        f"{before}\nfrom service import cli\n"
        f"try:\n    cli.main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n{after}"
    )


def test_the_client_commands_leave_the_transport_alone() -> None:
    out = run(
        cli_help(
            "health",
            after="import os, sys\n"
            "print('grpc' in sys.modules, os.environ.get('GRPC_EXPERIMENTS'), file=sys.stderr)",
        )
    )
    assert out.stderr.split()[-2:] == ["True", "None"], out.stderr


def test_the_grpc_loop_is_uvloops_when_installed() -> None:
    import uvloop

    from service.event_loop import event_loop

    assert isinstance(event_loop(), uvloop.Loop)


def test_without_uvloop_the_loop_is_asyncios_own() -> None:
    out = run(
        "import sys; sys.modules['uvloop'] = None\n"  # import uvloop -> ImportError
        "import asyncio; from service.event_loop import new_loop\n"
        "loop = new_loop(); print(type(loop).__module__, isinstance(loop, asyncio.BaseEventLoop))"
    )
    assert out.stdout.split() == ["asyncio.unix_events", "True"]


def test_serve_says_when_grpc_was_imported_too_early() -> None:
    out = run(cli_help("serve", before="import grpc"))
    assert "gRPC core keeps its own defaults" in out.stderr, out.stderr


def test_plaintext_probes_of_a_tls_port_leave_no_log_lines(tmp_path: Path) -> None:
    """gRPC core logs each failed handshake; the server runs it at ERROR level, so probes
    (anyone who can connect) cannot fill the log."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tls = {"tls_cert_file": str(tmp_path / "cert.pem"), "tls_key_file": str(tmp_path / "key.pem")}
    with serve_process(tmp_path, model_worker="inline", **tls) as server:
        for _ in range(20):
            with grpc.insecure_channel(server.target) as channel:
                with pytest.raises(grpc.RpcError):
                    HealthStub(channel).Check(HealthCheckRequest(), timeout=2)
        text = server.log_text()
    assert "Handshake failed" not in text and "ssl_transport_security" not in text, text
