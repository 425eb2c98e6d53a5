"""TLS, mutual TLS and bearer-token auth on real servers with a throwaway PKI.

The certificates are made per test session with the ``openssl`` command (the venv has no
``cryptography``): a CA, a server certificate for 127.0.0.1 and localhost, a client
certificate, and a second, unrelated CA with its own client certificate.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from detectors.demo import ARTIFACTS
from service import cli
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.client import InputError, ReliabilityClient, RequestError
from service.config import ConfigError, load_config
from service.security import AuthInterceptor, read_token, server_credentials
from service.server import SentryServer, create_server

TOKEN = "s3cr3t-t0ken_for.tests~"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_csr(cwd: Path, name: str, cn: str) -> None:
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd,
    )  # fmt: skip


def _sign(cwd: Path, name: str, ca: str, extensions: str, serial: int) -> None:
    (cwd / f"{name}.ext").write_text(extensions + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-set_serial", str(serial), "-days", "2", "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj",
        f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd,
    )  # fmt: skip


@dataclass(frozen=True)
class Pki:
    """PEM files: ca / server / client (signed by ca), other_ca / other_client."""

    dir: Path

    def __getattr__(self, name: str) -> str:
        kind = "key" if name.endswith("_key") else "pem"
        return str(self.dir / f"{name.removesuffix('_key')}.{kind}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other_ca")
    _key_and_csr(d, "server", "localhost")
    _sign(
        d,
        "server",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
        1,
    )
    _key_and_csr(d, "client", "test client")
    _sign(d, "client", "ca", "extendedKeyUsage=clientAuth", 2)
    _key_and_csr(d, "other_client", "stranger")
    _sign(d, "other_client", "other_ca", "extendedKeyUsage=clientAuth", 3)
    return Pki(d)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")  # a trailing newline, as editors write it
    return str(path)


def _start(environ: dict[str, str], config_file: Path | None = None) -> tuple[SentryServer, int]:
    torch.set_num_threads(1)
    base = {"GRADSENTRY_PORT": "0", "GRADSENTRY_METRICS_PORT": "0", "GRADSENTRY_DEVICE": "cpu"}
    return create_server(load_config(config_file, environ={**base, **environ}))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, token_file: str) -> Iterator[int]:
    """TLS + bearer token, configured through GRADSENTRY_* variables."""
    running, port = _start(
        {
            "GRADSENTRY_TLS_CERT_FILE": pki.server,
            "GRADSENTRY_TLS_KEY_FILE": pki.server_key,
            "GRADSENTRY_AUTH_TOKEN_FILE": token_file,
        }
    )
    yield port
    running.stop(None).wait(5)


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[int]:
    """Mutual TLS, configured through a YAML file with paths relative to it."""
    config = pki.dir / "server.yaml"
    config.write_text(
        "tls_cert_file: server.pem\ntls_key_file: server.key\ntls_client_ca_file: ca.pem\n"
    )
    running, port = _start({}, config)
    yield port
    running.stop(None).wait(5)


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    """A demo digit, float32 [1, 28, 28]."""
    return np.load(ARTIFACTS / "samples.npz")["images"][0][None].astype(np.float32) / 255.0


def _expect(code: grpc.StatusCode, call: Callable[[], object], match: str = "") -> RequestError:
    with pytest.raises(RequestError) as info:
        call()
    assert info.value.code == code, info.value
    assert match in info.value.details
    return info.value


# --- TLS --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_with_the_right_ca_works(tls_server: int, pki: Pki, digit: np.ndarray, host: str):
    with ReliabilityClient(f"{host}:{tls_server}", tls_ca_file=pki.ca, token=TOKEN) as client:
        assert client.secure
        assert client.health() == "SERVING"
        result = client.check(digit)
        assert result.verdict == "RELIABLE" and result.predicted_class == 3  # digit 0 is a 3
        assert client.info().input_shape == (1, 28, 28)


def test_tls_with_the_wrong_ca_or_plaintext_fails(tls_server: int, pki: Pki, digit: np.ndarray):
    target = f"127.0.0.1:{tls_server}"
    with ReliabilityClient(target, tls_ca_file=pki.other_ca, token=TOKEN, timeout=10) as client:
        err = _expect(grpc.StatusCode.UNAVAILABLE, lambda: client.check(digit))
        assert err.unreachable
    with ReliabilityClient(target, token=TOKEN, timeout=10) as client:
        assert not client.secure
        _expect(grpc.StatusCode.UNAVAILABLE, lambda: client.check(digit))


# --- mutual TLS ---------------------------------------------------------------------------


def test_mtls_accepts_a_client_certificate_from_its_ca(mtls_server: int, pki: Pki, digit):
    with ReliabilityClient(
        f"localhost:{mtls_server}",
        tls_ca_file=pki.ca,
        client_cert_file=pki.client,
        client_key_file=pki.client_key,
    ) as client:
        assert client.check(digit).verdict == "RELIABLE"


def test_mtls_refuses_clients_without_a_valid_certificate(mtls_server: int, pki: Pki, digit):
    target = f"localhost:{mtls_server}"
    with ReliabilityClient(target, tls_ca_file=pki.ca, timeout=10) as client:
        _expect(grpc.StatusCode.UNAVAILABLE, lambda: client.check(digit))
        # Health is behind the handshake too: without a certificate nothing gets through.
        _expect(grpc.StatusCode.UNAVAILABLE, client.health)
    with ReliabilityClient(
        target,
        tls_ca_file=pki.ca,
        client_cert_file=pki.other_client,
        client_key_file=pki.other_client_key,
        timeout=10,
    ) as client:
        _expect(grpc.StatusCode.UNAVAILABLE, lambda: client.check(digit))


# --- bearer token -------------------------------------------------------------------------


def _channel(port: int, pki: Pki) -> grpc.Channel:
    ca = Path(pki.ca).read_bytes()
    return grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))


def _request(x: np.ndarray) -> pb.CheckRequest:
    return pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=x.tobytes()))


def test_bearer_token_required_rejected_and_accepted(tls_server: int, pki: Pki, digit):
    with _channel(tls_server, pki) as channel:
        stub = pb_grpc.ReliabilityStub(channel)
        req = _request(digit)

        def code_and_details(metadata: tuple[tuple[str, str], ...]) -> tuple[object, str]:
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(req, metadata=metadata, timeout=10)
            return info.value.code(), info.value.details()

        unauth = grpc.StatusCode.UNAUTHENTICATED
        code, details = code_and_details(())
        assert code == unauth and "missing 'authorization: Bearer <token>'" in details
        for bad in ("Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer x" * 50):
            code, details = code_and_details((("authorization", bad),))
            assert code == unauth and details == "invalid bearer token"
            assert TOKEN not in details
        code, details = code_and_details((("authorization", f"Basic {TOKEN}"),))
        assert code == unauth and "must be 'Bearer <token>'" in details
        code, details = code_and_details((("authorization", "Bearer"),))
        assert code == unauth and "must be 'Bearer <token>'" in details

        good = (("authorization", f"Bearer {TOKEN}"),)
        assert stub.Check(req, metadata=good, timeout=30).verdict == pb.RELIABLE
        # The scheme is case-insensitive (RFC 6750 / RFC 7235).
        lower = (("authorization", f"bearer {TOKEN}"),)
        assert stub.Check(req, metadata=lower, timeout=30).verdict == pb.RELIABLE
        batch = pb.CheckBatchRequest(requests=[req, req])
        assert len(stub.CheckBatch(batch, metadata=good, timeout=30).responses) == 2
        assert len(list(stub.CheckStream(iter([req]), metadata=good, timeout=30))) == 1
        assert stub.GetInfo(pb.GetInfoRequest(), metadata=good, timeout=10).labels
        # Every Reliability method is protected, streams included.
        for call in (
            lambda: stub.CheckBatch(batch, timeout=10),
            lambda: list(stub.CheckStream(iter([req]), timeout=10)),
            lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=10),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == unauth


def test_health_and_reflection_stay_open_without_a_token(tls_server: int, pki: Pki):
    with _channel(tls_server, pki) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflect.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert "gradsentry.v1.Reliability" in names


def test_client_token_and_auth_header_parsing() -> None:
    auth = AuthInterceptor(TOKEN)
    assert auth.authorized((("authorization", f"Bearer {TOKEN}"),)) is None
    assert auth.authorized((("authorization", f"  BEARER   {TOKEN} "),)) is None
    assert auth.authorized((("x-other", "1"), ("authorization", f"Bearer {TOKEN}"))) is None
    twice = (("authorization", f"Bearer {TOKEN}"),) * 2
    assert "more than one" in (auth.authorized(twice) or "")
    assert auth.authorized(None) is not None
    with pytest.raises(ValueError, match="non-empty token"):
        AuthInterceptor("")
    with pytest.raises(ValueError, match="without whitespace"):
        ReliabilityClient("127.0.0.1:1", token="two words")


# --- configuration errors -----------------------------------------------------------------


def test_tls_config_fields_are_validated(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set both"):
        load_config(environ={"GRADSENTRY_TLS_CERT_FILE": pki.server})
    with pytest.raises(ConfigError, match="set both"):
        load_config(environ={"GRADSENTRY_TLS_KEY_FILE": pki.server_key})
    with pytest.raises(ConfigError, match="tls_client_ca_file: mutual TLS needs TLS"):
        load_config(environ={"GRADSENTRY_TLS_CLIENT_CA_FILE": pki.ca})
    config = load_config(environ={})
    assert (config.tls_cert_file, config.auth_token_file) == ("", "")
    assert server_credentials(config) is None
    # An empty path in a file means "off"; it is not resolved against the file's directory.
    path = tmp_path / "cfg.yaml"
    path.write_text('tls_cert_file: ""\ntls_key_file: ""\nauth_token_file: ""\n')
    assert load_config(path, environ={}).tls_cert_file == ""


def _creds(cert: str, key: str, ca: str = "") -> None:
    env = {"GRADSENTRY_TLS_CERT_FILE": cert, "GRADSENTRY_TLS_KEY_FILE": key}
    if ca:
        env["GRADSENTRY_TLS_CLIENT_CA_FILE"] = ca
    server_credentials(load_config(environ=env))


def test_server_credentials_name_the_bad_file(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    esc = re.escape(missing)
    with pytest.raises(ConfigError, match=f"tls_cert_file: cannot read {esc}"):
        _creds(missing, pki.server_key)
    with pytest.raises(ConfigError, match=f"tls_key_file: cannot read {esc}"):
        _creds(pki.server, missing)
    with pytest.raises(ConfigError, match=f"tls_client_ca_file: cannot read {esc}"):
        _creds(pki.server, pki.server_key, missing)
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        _creds(pki.server_key, pki.server_key)
    with pytest.raises(ConfigError, match="holds no PEM private key"):
        _creds(pki.server, pki.server)
    with pytest.raises(ConfigError, match="is not the private key of tls_cert_file"):
        _creds(pki.server, pki.client_key)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"tls_client_ca_file: .* no valid PEM CA"):
        _creds(pki.server, pki.server_key, str(garbage))
    empty = tmp_path / "empty.pem"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        _creds(str(empty), pki.server_key)
    _creds(pki.server, pki.server_key, pki.ca)  # the good set passes


def test_token_file_is_checked(tmp_path: Path, token_file: str) -> None:
    assert read_token(token_file) == TOKEN
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    with pytest.raises(ConfigError, match=r"auth_token_file: the token in .* may only hold"):
        read_token(str(spaced))
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(str(empty))
    with pytest.raises(ConfigError, match="auth_token_file: cannot read"):
        read_token(str(tmp_path / "missing"))
    # A server with an unusable token file refuses to start, before loading the model.
    with pytest.raises(ConfigError, match="auth_token_file"):
        _start({"GRADSENTRY_AUTH_TOKEN_FILE": str(spaced)})


def test_client_refuses_unusable_tls_files(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="both a client certificate and its key"):
        ReliabilityClient("localhost:1", tls_ca_file=pki.ca, client_cert_file=pki.client)
    with pytest.raises(InputError, match="cannot read CA certificate"):
        ReliabilityClient("localhost:1", tls_ca_file=str(tmp_path / "none.pem"))
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    with pytest.raises(InputError, match="is not a PEM file"):
        ReliabilityClient("localhost:1", tls_ca_file=str(not_pem))


# --- gradsentry check with TLS and a token ------------------------------------------------


def test_check_cli_with_tls_and_token(
    tls_server: int, pki: Pki, token_file: str, tmp_path: Path, capsys
) -> None:
    npy = tmp_path / "digit.npy"
    np.save(npy, np.load(ARTIFACTS / "samples.npz")["images"][0])
    target = ["--target", f"localhost:{tls_server}", "--tls-ca", pki.ca]
    assert cli.main(["check", str(npy), *target, "--token-file", token_file]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{npy}: predicted 3  RELIABLE  score ")
    assert cli.main(["check", str(npy), *target]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradsentry check: error: the sidecar at localhost:")
    assert "refused the caller" in err and "\n" not in err
    wrong_ca = ["--target", f"localhost:{tls_server}", "--tls-ca", pki.other_ca]
    assert cli.main(["check", str(npy), *wrong_ca, "--token-file", token_file]) == 2
    assert "cannot reach the sidecar" in capsys.readouterr().err
