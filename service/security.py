"""Transport security and caller authentication for the sidecar.

``server_credentials(config)`` turns the ``tls_*`` files into gRPC server credentials (TLS,
or mutual TLS when ``tls_client_ca_file`` is set), checking every file up front so a
missing, unreadable or mismatched one is a ``ConfigError`` naming it, not an obscure failure
at bind or handshake time. ``interceptors(config)`` gives the ``AuthInterceptor`` when
``auth_token_file`` is set: every call outside health and reflection must carry
``authorization: Bearer <token>``; probes and ``grpcurl list`` keep working without it.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import grpc

from service.config import ConfigError, ServerConfig
from service.dataplane.auth import AUTH_KEY, BearerCheck
from service.interceptors import Continuation, refusal

log = logging.getLogger(__name__)

AUTH_METADATA_KEY = AUTH_KEY
# Services reachable without a token: kubelet probes and API discovery must not need secrets.
OPEN_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
# RFC 6750 b64token: what a bearer token may contain (no spaces, no control characters).
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def _read(key: str, path: str) -> bytes:
    """The bytes of the file a config key names; ConfigError naming key and file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"{key}: {path} is empty")
    return data


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from ``config.tls_*`` (PEM files), or None for plaintext.

    With ``tls_client_ca_file`` the server requires and verifies a client certificate
    signed by that CA (mutual TLS).
    """
    if not config.tls_cert_file:
        return None
    cert = _read("tls_cert_file", config.tls_cert_file)
    key = _read("tls_key_file", config.tls_key_file)
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ConfigError(f"tls_cert_file: {config.tls_cert_file} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in key:
        raise ConfigError(f"tls_key_file: {config.tls_key_file} holds no PEM private key")
    if b"ENCRYPTED" in key:
        raise ConfigError(
            f"tls_key_file: {config.tls_key_file} is encrypted; gRPC needs an unencrypted "
            "key (protect the file with permissions instead)"
        )
    # gRPC only notices a key that does not match its certificate at handshake time; the
    # standard library checks the pair now (never prompting for a passphrase).
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            config.tls_cert_file, config.tls_key_file, password=lambda: b""
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls_key_file: {config.tls_key_file} is not the private key of "
            f"tls_cert_file {config.tls_cert_file} (or either is malformed): {exc.reason}"
        ) from None
    client_ca: bytes | None = None
    if config.tls_client_ca_file:
        client_ca = _read("tls_client_ca_file", config.tls_client_ca_file)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(
                cadata=client_ca.decode("ascii")
            )
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"tls_client_ca_file: {config.tls_client_ca_file} holds no valid PEM "
                f"CA certificate: {exc}"
            ) from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def read_token(path: str, key: str = "auth_token_file") -> str:
    """The bearer token in the file at ``path`` (surrounding whitespace stripped).

    The token must be RFC 6750 characters (letters, digits, ``-._~+/=``) so that it fits
    an HTTP/2 header unchanged; ConfigError naming ``key`` otherwise.
    """
    token = _read(key, path).decode("utf-8", errors="replace").strip()
    if not set(token) <= _TOKEN_CHARS:
        raise ConfigError(
            f"{key}: the token in {path} may only hold letters, digits and -._~+/= "
            "(one line, no spaces)"
        )
    return token


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    Calls to ``open_services`` (health, reflection) pass untouched. The token is checked by
    ``service.dataplane.auth.BearerCheck`` (constant-time), as for REST calls.
    """

    def __init__(self, token: str, open_services: frozenset[str] = OPEN_SERVICES) -> None:
        if not token:
            raise ValueError("AuthInterceptor needs a non-empty token")
        self.check = BearerCheck(token)
        self.open_services = open_services

    def authorized(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
        """None if ``metadata`` carries the right bearer token, else why not."""
        return self.check.problem([v for k, v in metadata or () if k == AUTH_METADATA_KEY])

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        service = handler_call_details.method.lstrip("/").partition("/")[0]
        handler = await continuation(handler_call_details)
        if handler is None or service in self.open_services:
            return handler
        problem = self.authorized(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        return refusal(handler, grpc.StatusCode.UNAUTHENTICATED, problem)


def interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """[AuthInterceptor] when ``config.auth_token_file`` is set, else []."""
    if not config.auth_token_file:
        return []
    if not config.tls_cert_file:
        log.warning(
            "bearer-token auth without TLS: tokens cross the network in clear text; "
            "only do this on a trusted local link"
        )
    return [AuthInterceptor(read_token(config.auth_token_file))]
