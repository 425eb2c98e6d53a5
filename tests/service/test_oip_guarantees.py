"""The Open Inference Protocol keeps gradsentry.v1's guarantees: graceful drain (counted at
the client), overload refusals, bearer-token auth and TLS, over gRPC and REST.

The drain runs a real ``gradsentry serve`` process with REST on: SIGTERM lands while 100
ModelInfer calls over gRPC and 20 over REST are in flight, queued in the batcher or still
on their way in. No call may be lost: each gets its full answer, or UNAVAILABLE / 503
when the server had not taken it in; calls after health turned NOT_SERVING get
UNAVAILABLE / 503, and the process exits 0 within its grace period.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from detectors.sentry import Sentry
from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from service.config import ConfigError, build_config
from service.server import SentryServer
from tests.servers import (
    ROOT,
    WAIT,
    ServerProcess,
    demo_server,
    serve_process,
    server_env,
    write_config,
)
from tests.service.test_security import TOKEN, Pki, pki, token_file  # noqa: F401 - fixtures

MODEL = "gradsentry"
SHAPE = [1, 1, 28, 28]
GRPC_CALLS, REST_CALLS = 100, 20
GRACE = 20.0
HOLDING = {  # the batcher holds a batch up to 3 s for company: SIGTERM lands while queued
    "max_batch_size": 256,
    "max_delay_ms": 3000,
    "dispatch_when_idle": False,
    "queue_size": 512,
    "grace_seconds": GRACE,
    "rest_enabled": True,
    "rest_port": 0,
}
_REST_LINE = re.compile(r"OIP REST on http://\S+:(\d+)/v2")


def infer_request(x: np.ndarray) -> oip_pb.ModelInferRequest:
    request = oip_pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=SHAPE)
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    request.outputs.add(name="logits")
    return request


def infer_body(x: np.ndarray) -> bytes:
    data = np.asarray(x, dtype=np.float32).reshape(-1).tolist()
    tensor = {"name": "input", "shape": SHAPE, "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor], "outputs": [{"name": "logits"}]}).encode()


def rest_call(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    """POST one infer on an open connection: (status, JSON reply); a connection that fails
    counts as status 0 (a lost call)."""
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=body)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    except (OSError, http.client.HTTPException) as exc:
        return 0, {"error": repr(exc)}


def rest_port_of(server: ServerProcess) -> int:
    match = _REST_LINE.search(server.log_text())
    assert match, server.log_text()
    return int(match.group(1))


def wait_queued(server: ServerProcess, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while server.metric("gradsentry_queue_depth") < count:
        assert time.monotonic() < deadline, "the calls never reached the queue"
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["all_queued", "at_once"])
def test_sigterm_answers_every_accepted_oip_call_and_loses_none(
    moment: str, tmp_path: Path, samples, sentry: Sentry
) -> None:
    images = samples[0].astype(np.float32) / 255.0
    total = GRPC_CALLS + REST_CALLS
    x = np.stack([images[i % len(images)] for i in range(total)])[:, None]  # [120, 1, 28, 28]
    reference = sentry.check(torch.from_numpy(x)).predicted
    with (
        serve_process(tmp_path, **HOLDING) as server,
        grpc.insecure_channel(server.target) as channel,
        ThreadPoolExecutor(REST_CALLS) as pool,
    ):
        rest_port = rest_port_of(server)
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=WAIT
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        conns = [
            http.client.HTTPConnection("127.0.0.1", rest_port, timeout=WAIT)
            for _ in range(REST_CALLS + 1)
        ]
        for conn in conns:
            conn.connect()
        grpc_calls = [
            stub.ModelInfer.future(infer_request(x[i]), timeout=WAIT) for i in range(GRPC_CALLS)
        ]
        rest_calls = [
            pool.submit(rest_call, conns[k], infer_body(x[GRPC_CALLS + k]))
            for k in range(REST_CALLS)
        ]
        if moment == "all_queued":
            wait_queued(server, total)
        queued = server.metric("gradsentry_queue_depth")  # taken in before SIGTERM
        sigterm = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        late_grpc = stub.ModelInfer.future(infer_request(x[0]), timeout=WAIT)
        late_rest = rest_call(conns[-1], infer_body(x[0]))

        answered = 0
        codes = [call.code() for call in grpc_calls]
        for i, call in enumerate(grpc_calls):
            if call.code() == grpc.StatusCode.OK:
                logits = np.frombuffer(call.result().raw_output_contents[0], "<f4")
                assert int(logits.argmax()) == int(reference[i])
                answered += 1
        statuses = []
        for k, future in enumerate(rest_calls):
            status, reply = future.result(WAIT)
            statuses.append(status)
            if status == 200:
                logits = reply["outputs"][0]["data"]
                assert int(np.argmax(logits)) == int(reference[GRPC_CALLS + k])
                answered += 1
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        assert set(statuses) <= {200, 503}, statuses  # 0 would be a call lost on the wire
        assert answered >= queued  # every input taken in before SIGTERM was answered
        if moment == "all_queued":
            assert answered == total
        assert late_grpc.code() == grpc.StatusCode.UNAVAILABLE
        assert late_rest[0] == 503 and "shutting down" in late_rest[1]["error"], late_rest
        assert server.proc.wait(timeout=GRACE + WAIT) == 0
        assert time.monotonic() - sigterm < GRACE
        for conn in conns:
            conn.close()
    assert "Traceback" not in server.log_text()


@pytest.fixture()
def held_server() -> Iterator[tuple[SentryServer, int]]:
    """Two unary calls at once (max_workers), batches held 60 s for company."""
    with demo_server(
        GRADSENTRY_REST_ENABLED="true",
        GRADSENTRY_REST_PORT="0",
        GRADSENTRY_MAX_WORKERS="2",
        GRADSENTRY_MAX_BATCH_SIZE="8",
        GRADSENTRY_MAX_DELAY_MS="60000",
        GRADSENTRY_DISPATCH_WHEN_IDLE="false",
    ) as started:
        yield started


def test_overload_is_resource_exhausted_and_429_across_transports(
    held_server: tuple[SentryServer, int], samples
) -> None:
    """One call held over gRPC and one over REST take the unary budget of 2 that every
    transport shares: the next call, by either, is refused at once."""
    running, port = held_server
    x = samples[0][:3].astype(np.float32)[:, None] / 255.0
    conn = http.client.HTTPConnection("127.0.0.1", running.rest_port, timeout=WAIT)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(1) as pool:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        held_grpc = stub.ModelInfer.future(infer_request(x[0]), timeout=WAIT)
        held_rest = pool.submit(rest_call, conn, infer_body(x[1]))
        deadline = time.monotonic() + WAIT
        while running.plane.batcher.depth < 2:
            assert time.monotonic() < deadline, "the calls never reached the queue"
            time.sleep(0.01)
        g = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        h = triton_http.InferenceServerClient(f"127.0.0.1:{running.rest_port}")
        try:
            for client, module, code in (
                (g, triton_grpc, "StatusCode.RESOURCE_EXHAUSTED"),
                (h, triton_http, "429"),
            ):
                tensor = module.InferInput("input", SHAPE, "FP32")
                tensor.set_data_from_numpy(x[2:3])
                with pytest.raises(InferenceServerException) as info:
                    client.infer(MODEL, [tensor])
                assert info.value.status() == code
                assert "most unary calls at once (2)" in info.value.message()
        finally:
            g.close()
            h.close()
        assert not held_grpc.done() and not held_rest.done()  # the held calls go on
        running.plane.batcher.close(drain=True, timeout=0)  # let them go: answered now
        assert held_grpc.result(WAIT).model_name == MODEL
        assert held_rest.result(WAIT)[0] == 200
    conn.close()


@pytest.fixture(scope="module")
def secure_server(pki: Pki, token_file: str) -> Iterator[tuple[SentryServer, int]]:  # noqa: F811
    """TLS + bearer token, REST on."""
    with demo_server(
        GRADSENTRY_TLS_CERT_FILE=pki.server,
        GRADSENTRY_TLS_KEY_FILE=pki.server_key,
        GRADSENTRY_AUTH_TOKEN_FILE=token_file,
        GRADSENTRY_REST_ENABLED="true",
        GRADSENTRY_REST_PORT="0",
    ) as started:
        yield started


def test_oip_over_grpc_needs_tls_and_the_token(
    secure_server: tuple[SentryServer, int],
    pki: Pki,  # noqa: F811
    samples,
) -> None:
    _, port = secure_server
    x = samples[0][:1].astype(np.float32)[:, None] / 255.0
    tensor = triton_grpc.InferInput("input", SHAPE, "FP32")
    tensor.set_data_from_numpy(x)
    client = triton_grpc.InferenceServerClient(
        f"localhost:{port}", ssl=True, root_certificates=pki.ca
    )
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [tensor])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [tensor], headers={"authorization": "Bearer wrong"})
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        good = client.infer(MODEL, [tensor], headers={"authorization": f"Bearer {TOKEN}"})
        assert good.as_numpy("gradsentry_score").shape == (1,)
    finally:
        client.close()
    plain = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        with pytest.raises(InferenceServerException) as info:
            plain.infer(MODEL, [tensor], headers={"authorization": f"Bearer {TOKEN}"})
        assert info.value.status() == "StatusCode.UNAVAILABLE"  # no TLS handshake
    finally:
        plain.close()


def curl(port: int, path: str, *args: str) -> tuple[int, str]:
    """(HTTP status, body) of ``curl https://localhost:PORT/PATH ARGS``; status 0 when
    curl itself fails (a TLS handshake refused)."""
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args, f"https://localhost:{port}{path}"],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    if done.returncode != 0:
        return 0, done.stderr
    text, _, status = done.stdout.rpartition("\n")
    return int(status), text


def test_oip_over_rest_needs_tls_and_the_token_but_probes_do_not(
    secure_server: tuple[SentryServer, int],
    pki: Pki,  # noqa: F811
    samples,
) -> None:
    running, _ = secure_server
    port = running.rest_port
    assert port is not None
    x = samples[0][:1].astype(np.float32)[:, None] / 255.0
    body = infer_body(x)
    ca = ("--cacert", pki.ca)
    post = ("-H", "content-type: application/json", "--data-binary", body.decode())
    assert curl(port, "/v2/health/ready", *ca) == (200, '{"ready":true}')
    assert curl(port, "/v2/health/live", *ca)[0] == 200
    status, text = curl(port, f"/v2/models/{MODEL}/infer", *ca, *post)
    assert status == 401 and "missing 'authorization: Bearer <token>' header" in text
    status, text = curl(port, f"/v2/models/{MODEL}", *ca, "-H", "authorization: Bearer nope")
    assert status == 401 and "invalid bearer token" in text
    token = ("-H", f"authorization: Bearer {TOKEN}")
    status, text = curl(port, f"/v2/models/{MODEL}/infer", *ca, *post, *token)
    assert status == 200 and json.loads(text)["outputs"][0]["name"] == "logits"
    assert curl(port, "/v2/health/ready", "--cacert", pki.other_ca)[0] == 0  # wrong CA
    # tritonclient over HTTPS with the token, as a pipeline would call it.
    client = triton_http.InferenceServerClient(
        f"localhost:{port}",
        ssl=True,
        ssl_context_factory=lambda: ssl.create_default_context(cafile=pki.ca),
    )
    try:
        tensor = triton_http.InferInput("input", SHAPE, "FP32")
        tensor.set_data_from_numpy(x)
        reply = client.infer(MODEL, [tensor], headers={"authorization": f"Bearer {TOKEN}"})
        assert reply.as_numpy("gradsentry_flagged").dtype == np.bool_
    finally:
        client.close()


def test_serve_rest_port_flag_turns_rest_on(tmp_path: Path) -> None:
    """``gradsentry serve --rest-port 0``: REST on a free port, the health probe open."""
    config = write_config(tmp_path)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(config),
             "--rest-port", "0"],
            cwd=ROOT, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT
        while not (match := _REST_LINE.search(log_path.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=WAIT)
        while True:  # REST listens before the warm-up ends: not ready (503) until then
            conn.request("GET", "/v2/health/ready")
            reply = conn.getresponse()
            body = json.loads(reply.read())
            if reply.status == 200:
                break
            assert (reply.status, body) == (503, {"ready": False})
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert body == {"ready": True}
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


def test_rest_and_model_name_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="rest_port: must be a port number"):
        build_config({"rest_port": 70000})
    with pytest.raises(ConfigError, match="model_name: must be non-empty"):
        build_config({"model_name": "a/b"})
    config = build_config({"rest_enabled": True, "rest_port": 0, "model_name": "digits"})
    assert (config.rest_enabled, config.rest_port, config.model_name) == (True, 0, "digits")
