"""``gradsentry health``: exit 0 only when the sidecar's grpc.health.v1 reports SERVING.

Made for container health checks (Docker ``HEALTHCHECK``, Kubernetes exec probes). It
imports only grpc and the health stubs, so ``python -m service.health`` answers in a
fraction of a second where the full ``gradsentry`` command line first loads torch. The
default target is 127.0.0.1 on ``GRADSENTRY_PORT`` (50051 when unset): the port the server
in the same container listens on. Prints the status (or why there is none) on one line.
Exit codes: 0 SERVING; 1 anything else — NOT_SERVING, SERVICE_UNKNOWN, unreachable, no
answer in time, unusable TLS files (Docker reserves 2 for its own use).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
PORT_VARIABLE = "GRADSENTRY_PORT"
SERVING = "SERVING"
HEALTHY, UNHEALTHY = 0, 1


class HealthError(RuntimeError):
    """No health status could be obtained (unreachable, timeout, bad TLS files...)."""


def default_target(environ: Mapping[str, str] | None = None) -> str:
    """``127.0.0.1:<GRADSENTRY_PORT>``, the server's own port inside its container."""
    env = os.environ if environ is None else environ
    text = env.get(PORT_VARIABLE, "").strip()
    if not text:
        return f"{DEFAULT_HOST}:{DEFAULT_PORT}"
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise HealthError(f"{PORT_VARIABLE}={text!r} is not a port number; pass --target")
    return f"{DEFAULT_HOST}:{int(text)}"


def _read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise HealthError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def channel(
    target: str,
    *,
    tls_ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    """A channel to ``target``: plaintext unless a CA or a client certificate is given."""
    if (cert is None) != (key is None):
        raise HealthError("--cert and --key go together (mutual TLS)")
    if tls_ca is None and cert is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls_ca, "CA certificate"),
        private_key=_read_pem(key, "client key"),
        certificate_chain=_read_pem(cert, "client certificate"),
    )
    # A probe dials 127.0.0.1, which a server certificate rarely names.
    options = [] if server_name is None else [("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(target, credentials, options=options)


def check_health(ch: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """The status name ("SERVING", "NOT_SERVING", ...) of ``service`` ("" = whole server)."""
    try:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        if code == grpc.StatusCode.NOT_FOUND:  # the server does not know that service name
            return "SERVICE_UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise HealthError(f"{code.name}: {' '.join((details or '').split())}") from None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The probe's flags (shared by ``gradsentry health`` and ``python -m service.health``)."""
    p.add_argument(
        "--target",
        "--address",
        metavar="HOST:PORT",
        help=f"the sidecar's gRPC address (default {DEFAULT_HOST}:${PORT_VARIABLE}, "
        f"{DEFAULT_PORT} when unset)",
    )
    p.add_argument(
        "--service",
        default="",
        help="service name to ask about (default: the whole server)",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="call timeout (default 5)"
    )
    p.add_argument(
        "--tls-ca", metavar="FILE", help="PEM CA that signed the server certificate (turns on TLS)"
    )
    p.add_argument("--cert", metavar="FILE", help="PEM client certificate (mutual TLS)")
    p.add_argument("--key", metavar="FILE", help="PEM key of --cert")
    p.add_argument("--server-name", metavar="NAME", help="name to expect in the server certificate")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Probe once; print the status (or the reason there is none); 0 only when SERVING."""
    try:
        if not args.timeout > 0:
            raise HealthError(f"--timeout must be > 0 seconds, got {args.timeout}")
        target = args.target or default_target()
        with channel(
            target, tls_ca=args.tls_ca, cert=args.cert, key=args.key, server_name=args.server_name
        ) as ch:
            status = check_health(ch, args.service, args.timeout)
    except HealthError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return UNHEALTHY
    print(status if status == SERVING else f"unhealthy: {target} reports {status}")
    return HEALTHY if status == SERVING else UNHEALTHY


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.health [--target HOST:PORT] ...``"""
    p = argparse.ArgumentParser(prog="python -m service.health", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
