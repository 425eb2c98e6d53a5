"""Property: request bytes that are not protobuf of the method's type get INVALID_ARGUMENT.

Raw bytes, not typed stubs, go to a real ``gradsentry serve`` for every method it serves:
at least 1,000 undecodable messages per method (random bytes, and valid messages cut
short), generated from a fixed seed that every failure message repeats. Each is answered
INVALID_ARGUMENT, counted in ``gradsentry_requests_total``, and logs nothing; a stream
with a bad message behind good ones answers the good ones first and does not hang.
Random bytes that happen to parse are sent too: they must get the method's own answer,
never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from tests.servers import ServerProcess, serve_process, tensor_request

SEED = 20261202
PER_METHOD = 1000
RELIABILITY = "gradsentry.v1.Reliability"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
OIP = "inference.GRPCInferenceService"
CALL_TIMEOUT = 20.0  # a call that hangs fails here instead of holding the suite
BAD = grpc.StatusCode.INVALID_ARGUMENT
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

_digit = tensor_request(np.zeros((1, 28, 28), np.float32))
_batch = pb.CheckBatchRequest(requests=[_digit])
_probe = health_pb2.HealthCheckRequest(service="")
_Probe = health_pb2.HealthCheckRequest
_infer = oip_pb.ModelInferRequest(model_name="gradsentry")
_infer.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
_infer.raw_input_contents.append(bytes(4 * 784))
_metadata = oip_pb.ModelMetadataRequest(name="gradsentry")
# (service, method, request type, a valid request, kind): kind "unary", "stream" (request
# stream) or "watch" (one request, response stream).
METHODS: tuple[tuple[str, str, type[Message], Message, str], ...] = (
    (RELIABILITY, "Check", pb.CheckRequest, _digit, "unary"),
    (RELIABILITY, "CheckBatch", pb.CheckBatchRequest, _batch, "unary"),
    (RELIABILITY, "CheckStream", pb.CheckRequest, _digit, "stream"),
    (RELIABILITY, "GetInfo", pb.GetInfoRequest, pb.GetInfoRequest(), "unary"),
    (OIP, "ModelInfer", oip_pb.ModelInferRequest, _infer, "unary"),
    (OIP, "ModelMetadata", oip_pb.ModelMetadataRequest, _metadata, "unary"),
    (HEALTH, "Check", _Probe, _probe, "unary"),
    (HEALTH, "Watch", _Probe, _probe, "watch"),
    (
        REFLECTION,
        "ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        "stream",
    ),
)  # fmt: skip


def parses(kind: type[Message], data: bytes) -> bool:
    try:
        kind.FromString(data)
    except DecodeError:
        return False
    return True


def messages(kind: type[Message], valid: Message, rng: np.random.Generator) -> Iterator[bytes]:
    """Random bytes (some behind a plausible first tag) and valid messages cut short, in
    turn; both decodable and undecodable ones."""
    whole = valid.SerializeToString()
    yield b"\x0a\xff"  # field 1, length-delimited, length varint never ends
    while True:
        size = int(rng.integers(1, 64))
        noise = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        yield noise
        yield bytes([int(rng.choice([0x0A, 0x12, 0x1A, 0x22, 0x08]))]) + noise
        if len(whole) > 1:
            yield whole[: int(rng.integers(1, len(whole)))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve_process(tmp_path_factory.mktemp("protobuf"), max_open_streams=64) as started:
        yield started


def caller(channel: grpc.Channel, path: str, kind: str) -> Callable[[list[bytes]], grpc.StatusCode]:
    """Raw bytes in, final status code out (responses are read and dropped)."""
    if kind == "unary":
        call = channel.unary_unary(path)

        def unary(data: list[bytes]) -> grpc.StatusCode:
            try:
                call(data[0], timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        return unary
    streamed = channel.stream_stream(path) if kind == "stream" else channel.unary_stream(path)

    def stream(data: list[bytes]) -> grpc.StatusCode:
        responses = streamed(iter(data) if kind == "stream" else data[0], timeout=CALL_TIMEOUT)
        try:
            for _ in responses:
                if kind == "watch":  # a watch answers and stays open: one answer will do
                    responses.cancel()
                    return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    return stream


@pytest.mark.parametrize(("service", "method", "kind", "valid", "shape"), METHODS)
def test_undecodable_messages_are_invalid_argument_counted_and_silent(
    server: ServerProcess,
    service: str,
    method: str,
    kind: type[Message],
    valid: Message,
    shape: str,
) -> None:
    rng = np.random.default_rng(SEED)
    before = server.calls_ended(method, "INVALID_ARGUMENT", service)
    log_size = server.log.stat().st_size
    undecodable, codes = 0, Counter[grpc.StatusCode]()
    with grpc.insecure_channel(server.target) as channel:
        send = caller(channel, f"/{service}/{method}", shape)
        for data in messages(kind, valid, rng):
            if undecodable >= PER_METHOD:
                break
            bad = not parses(kind, data)
            code = send([data])
            where = f"seed {SEED}, {service}/{method}, bytes {data.hex()}"
            assert code not in NEVER, where
            if bad:
                assert code == BAD, (where, code)
                undecodable += 1
            codes[code] += 1
        if shape == "stream":  # good messages first: answered, then the bad one ends it
            good = valid.SerializeToString()
            assert send([good, good, b"\x0a\xff"]) == BAD
            undecodable += 1
    expected = codes[BAD] + (shape == "stream")
    counted = server.wait_calls_ended(method, "INVALID_ARGUMENT", before + expected, service)
    counted -= before
    # Decodable random messages may be invalid inputs too (an empty CheckRequest): counted
    # as INVALID_ARGUMENT as well, so at least every undecodable one.
    assert counted >= undecodable, (SEED, counted, undecodable, codes)
    assert counted == expected, (SEED, counted, codes)
    # Nothing was logged for any of them: client mistakes are answered, not logged.
    with server.log.open("rb") as log:
        log.seek(log_size)
        assert log.read() == b""


def test_an_undecodable_stream_message_ends_the_stream(server: ServerProcess) -> None:
    """Bytes 0a ff on CheckStream, without a deadline: answered, not left waiting."""
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream(f"/{RELIABILITY}/CheckStream")
        responses = stream(iter([b"\x0a\xff"]))
        with pytest.raises(grpc.RpcError) as info:
            next(responses)
        assert info.value.code() == BAD
        assert "malformed request message" in info.value.details()
