"""OIP REST calls have deadlines and end when their client leaves, as gRPC calls do; an
OIP gRPC call's ``parameters.timeout`` is its deadline too.

``parameters.timeout`` (microseconds, what ``tritonclient.http``'s ``infer(timeout=...)``
sends) is the call's deadline: past it the call gets 504 and its input, still queued, is
never computed. A client that disconnects (curl giving up) has its queued input cancelled.
A malformed timeout is 400, naming the parameter, before anything is queued.

The server holds every batch for company (8 inputs or 60 s), so a lone input stays queued
for as long as the test needs; a call of as many inputs as the batch lacks then fills it,
which shows what the model computed: those, never the inputs whose call had ended.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from service.dataplane.deadline import NO_DEADLINE
from service.engine.batcher import BatcherStats
from service.server import SentryServer
from tests.servers import WAIT, demo_server

MODEL = "gradsentry"
REST = "inference.REST"
BATCH = 8
JSON = "content-type: application/json"
MAX_TIMEOUT_US = int(NO_DEADLINE * 1_000_000)  # past it a deadline means none


@pytest.fixture(scope="module")
def held() -> Iterator[SentryServer]:
    """REST on; a batch leaves with 8 inputs, or after 60 s."""
    with demo_server(
        GRADSENTRY_REST_ENABLED="true",
        GRADSENTRY_REST_PORT="0",
        GRADSENTRY_MAX_BATCH_SIZE=str(BATCH),
        GRADSENTRY_MAX_DELAY_MS="60000",
        GRADSENTRY_DISPATCH_WHEN_IDLE="false",
    ) as (running, _):
        yield running


@pytest.fixture(scope="module")
def digits(samples) -> np.ndarray:
    """float32 [8, 1, 28, 28] demo digits in [0, 1]."""
    return samples[0][:BATCH].astype(np.float32)[:, None] / 255.0


def infer_url(running: SentryServer) -> str:
    return f"http://127.0.0.1:{running.rest_port}/v2/models/{MODEL}/infer"


def json_body(x: np.ndarray, **parameters: object) -> str:
    """An infer request's JSON body: inputs x [N, 1, 28, 28] as one FP32 tensor."""
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    return json.dumps(
        {"parameters": parameters, "inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}
    )


def rest_calls(running: SentryServer, code: str) -> float:
    labels = {"service": REST, "method": "ModelInfer", "code": code}
    return running.metrics.registry.get_sample_value("gradsentry_requests_total", labels) or 0.0


def computed(running: SentryServer) -> float:
    """Inputs the model has computed, by the batch-size metric."""
    return running.metrics.registry.get_sample_value("gradsentry_batch_size_sum") or 0.0


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def infer(running: SentryServer, x: np.ndarray, **options: int) -> triton_http.InferResult:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{running.rest_port}")
    try:
        tensor = triton_http.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(MODEL, [tensor], **options)
    finally:
        client.close()


def fill_the_batch(
    running: SentryServer, x: np.ndarray, before: BatcherStats, queued: int, **options: int
) -> None:
    """Send the inputs that complete the held batch, ``queued`` inputs of ended calls in it:
    the new ones, and only they, are computed; the queued ones are dropped unscored."""
    result = infer(running, x[queued:], **options)
    assert result.as_numpy("gradsentry_score").shape == (BATCH - queued,)
    wait_for(lambda: running.plane.batcher.stats().batches > before.batches, "no batch ran")
    stats = running.plane.batcher.stats()
    assert stats.scored - before.scored == BATCH - queued
    assert stats.submitted - before.submitted == BATCH
    assert running.plane.batcher.depth == 0


def test_a_timeout_is_the_calls_deadline_and_its_input_is_not_computed(
    held: SentryServer, digits: np.ndarray
) -> None:
    before, model_before = held.plane.batcher.stats(), computed(held)
    ended = rest_calls(held, "DEADLINE_EXCEEDED")
    with pytest.raises(InferenceServerException) as info:
        infer(held, digits[:1], timeout=300_000)  # 0.3 s, in microseconds
    assert info.value.status() == "504"
    assert "deadline passed" in info.value.message()
    assert rest_calls(held, "DEADLINE_EXCEEDED") == ended + 1
    assert held.plane.batcher.depth == 1  # still queued, but its call is over

    # A generous timeout is no obstacle: the 7 are answered, the late input never computed.
    fill_the_batch(held, digits, before, 1, timeout=int(WAIT * 1_000_000))
    stats = held.plane.batcher.stats()
    assert stats.cancelled + stats.expired - before.cancelled - before.expired == 1
    assert computed(held) - model_before == BATCH - 1


@pytest.mark.parametrize(
    ("n", "parameters"),
    [(1, {}), (2, {"timeout": 60_000_000})],
    ids=["one-input-no-timeout", "two-inputs-a-minute"],
)
def test_a_client_that_disconnects_leaves_its_inputs_uncomputed(
    held: SentryServer, digits: np.ndarray, n: int, parameters: dict
) -> None:
    before, model_before = held.plane.batcher.stats(), computed(held)
    gone = rest_calls(held, "CANCELLED")
    # curl gives up after 1 s, long before any deadline, and closes the connection.
    done = subprocess.run(
        ["curl", "-s", "--max-time", "1", "-H", JSON, "-d", "@-", infer_url(held)],
        input=json_body(digits[:n], **parameters),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 28, done  # curl's "operation timed out"
    wait_for(lambda: rest_calls(held, "CANCELLED") == gone + 1, "the call never ended")

    assert held.plane.batcher.depth == n

    # timeout 0 is Triton's "none": the others wait for their batch and are answered.
    fill_the_batch(held, digits, before, n, timeout=0)
    stats = held.plane.batcher.stats()
    assert stats.cancelled - before.cancelled == n  # the client's cancel, not a deadline
    assert stats.expired == before.expired
    assert computed(held) - model_before == BATCH - n


@pytest.mark.parametrize("sent", ["whole", "half"])
def test_a_client_that_leaves_at_once_is_cancelled_not_an_error(
    held: SentryServer, digits: np.ndarray, caplog: pytest.LogCaptureFixture, sent: str
) -> None:
    """A raw HTTP client that sends its request (or half its body) and closes the connection
    straight away: the server sees it gone while reading the body or while the input is
    queued; either way the call is CANCELLED (not a server error), its input never
    computed."""
    before, model_before = held.plane.batcher.stats(), computed(held)
    gone, internal = rest_calls(held, "CANCELLED"), rest_calls(held, "INTERNAL")
    data = json_body(digits[:1]).encode()
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", held.rest_port), timeout=WAIT) as sock:
        sock.sendall(head.encode() + (data if sent == "whole" else data[: len(data) // 2]))
    wait_for(lambda: rest_calls(held, "CANCELLED") == gone + 1, "the call never ended")
    assert rest_calls(held, "INTERNAL") == internal
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    queued = held.plane.batcher.depth  # 1 when it was queued before the server saw it go
    if sent == "half":
        assert queued == 0
    fill_the_batch(held, digits, before, queued)
    stats = held.plane.batcher.stats()
    assert stats.cancelled - before.cancelled == queued
    assert computed(held) - model_before == BATCH - queued


@pytest.mark.parametrize(
    "timeout",
    [-1, 1.5, "1000", True, None, [1000], MAX_TIMEOUT_US + 1, 10**30],
    ids=["negative", "float", "string", "bool", "null", "list", "over-max", "huge"],
)
def test_a_malformed_timeout_is_400_naming_it_before_any_work(
    held: SentryServer, digits: np.ndarray, timeout: object
) -> None:
    submitted = held.plane.batcher.stats().submitted
    done = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", "-H", JSON, "-d", "@-", infer_url(held)],
        input=json_body(digits[:1], timeout=timeout),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    text, status = done.stdout.rsplit("\n", 1)
    assert status == "400", done.stdout
    error = json.loads(text)["error"]
    assert error.startswith("parameters.timeout must be an integer number of microseconds")
    assert held.plane.batcher.stats().submitted == submitted  # refused before queueing


# OIP over gRPC: tritonclient.grpc's ``infer(timeout=...)`` sends the same parameter.


def grpc_calls_ended(running: SentryServer, code: str) -> float:
    labels = {"service": "inference.GRPCInferenceService", "method": "ModelInfer", "code": code}
    return running.metrics.registry.get_sample_value("gradsentry_requests_total", labels) or 0.0


def test_a_grpc_timeout_parameter_is_the_calls_deadline_too(
    held: SentryServer, digits: np.ndarray
) -> None:
    before, model_before = held.plane.batcher.stats(), computed(held)
    ended = grpc_calls_ended(held, "DEADLINE_EXCEEDED")
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{held.port}")
    try:
        tensor = triton_grpc.InferInput("input", [1, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(digits[:1])
        with pytest.raises(InferenceServerException) as info:  # 0.3 s, in microseconds,
            client.infer(MODEL, [tensor], timeout=300_000, client_timeout=WAIT)  # < 60 s
    finally:
        client.close()
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # The server counts the call once its answer is out: a moment after the client has it.
    wait_for(lambda: grpc_calls_ended(held, "DEADLINE_EXCEEDED") == ended + 1, "not counted")
    assert held.plane.batcher.depth == 1  # still queued, but its call is over
    fill_the_batch(held, digits, before, 1)
    assert computed(held) - model_before == BATCH - 1


@pytest.mark.parametrize(
    "param",
    [{"int64_param": -1}, {"string_param": "1000"}, {"bool_param": True},
     {"int64_param": MAX_TIMEOUT_US + 1}, {}],
    ids=["negative", "string", "bool", "over-max", "unset"],
)  # fmt: skip
def test_a_malformed_grpc_timeout_is_invalid_argument_before_any_work(
    held: SentryServer, digits: np.ndarray, param: dict
) -> None:
    submitted = held.plane.batcher.stats().submitted
    request = oip_pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(digits[0].tobytes())
    request.parameters["timeout"].CopyFrom(oip_pb.InferParameter(**param))
    with grpc.insecure_channel(f"127.0.0.1:{held.port}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(
        "parameters.timeout must be an integer number of microseconds"
    )
    assert held.plane.batcher.stats().submitted == submitted  # refused before queueing
