"""The real server on 127.0.0.1 with the committed demo, against Sentry used directly."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from detectors.sentry import Sentry
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from tests.servers import FEATURE_ATOL, FEATURE_RTOL, SCORE_ATOL, tensor_request

N = 6  # sample digits per test: enough to cover classes, fast on 2 cores


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


def png_request(image: np.ndarray) -> pb.CheckRequest:
    """image uint8 [28, 28]."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return pb.CheckRequest(image=pb.EncodedImage(data=buf.getvalue()))


def assert_matches(response: pb.CheckResponse, v, i: int) -> None:
    """A response equals row i of a direct Sentry.check."""
    assert response.predicted_class == int(v.predicted[i])
    assert response.label == str(int(v.predicted[i]))
    assert response.score == pytest.approx(float(v.score[i]), abs=SCORE_ATOL)
    assert response.verdict == (pb.FLAGGED if v.flagged[i] else pb.RELIABLE)
    for kind, scores in v.kind_scores.items():
        assert response.kind_scores[kind] == pytest.approx(float(scores[i]), abs=SCORE_ATOL)
    assert pb.Kind.Name(response.kind).lower() == v.kind[i]


@pytest.fixture(scope="module")
def reference(samples, sentry: Sentry):
    images, _ = samples
    return sentry.check(torch.from_numpy(as_float(images[:N])))


def test_health_is_serving_after_start(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "gradsentry.v1.Reliability"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_check_tensor_and_png_match_sentry(stub: pb_grpc.ReliabilityStub, samples, reference):
    images, _ = samples
    x = as_float(images[:N])
    for i in range(N):
        by_tensor = stub.Check(tensor_request(x[i], return_probabilities=True), timeout=30)
        assert_matches(by_tensor, reference, i)
        np.testing.assert_allclose(
            by_tensor.probabilities, reference.probabilities[i], atol=SCORE_ATOL
        )
        assert_matches(stub.Check(png_request(images[i]), timeout=30), reference, i)


def test_options_request_ids_and_timings(stub: pb_grpc.ReliabilityStub, samples, sentry):
    images, _ = samples
    x = as_float(images[:1])
    plain, call = stub.Check.with_call(tensor_request(x[0]), timeout=30)
    assert len(plain.probabilities) == 0 and len(plain.features) == 0
    # A unary call carries its id in trailing metadata (sent with the status)
    assert plain.request_id and (("x-request-id", plain.request_id) in call.trailing_metadata())
    assert plain.threshold == pytest.approx(sentry.threshold)
    assert plain.timings.decode_seconds > 0
    assert plain.timings.forward_seconds > 0 and plain.timings.backward_seconds > 0
    assert plain.timings.statistics_seconds > 0 and plain.timings.detector_seconds > 0
    full = stub.Check(
        tensor_request(x[0], return_features=True),
        metadata=(("x-request-id", "abc-123"),),
        timeout=30,
    )
    assert full.request_id == "abc-123"
    v = sentry.check(torch.from_numpy(x))
    np.testing.assert_allclose(full.features, v.features[0], rtol=FEATURE_RTOL, atol=FEATURE_ATOL)
    own = stub.Check(pb.CheckRequest(tensor=tensor_request(x[0]).tensor, request_id="mine"))
    assert own.request_id == "mine"


def test_uint8_tensor_equals_float_tensor(stub: pb_grpc.ReliabilityStub, samples, reference):
    images, _ = samples
    req = pb.CheckRequest(
        tensor=pb.Tensor(dtype=pb.UINT8, shape=[1, 1, 28, 28], data=images[0].tobytes())
    )
    assert_matches(stub.Check(req, timeout=30), reference, 0)


def test_check_batch_equals_individual_checks(stub: pb_grpc.ReliabilityStub, samples, reference):
    images, _ = samples
    x = as_float(images[:N])
    batch = stub.CheckBatch(
        pb.CheckBatchRequest(requests=[tensor_request(x[i]) for i in range(N)]),
        metadata=(("x-request-id", "b"),),
        timeout=30,
    )
    assert len(batch.responses) == N
    for i, response in enumerate(batch.responses):
        assert response.request_id == f"b/{i}"
        assert_matches(response, reference, i)


def test_check_stream(stub: pb_grpc.ReliabilityStub, samples, reference):
    images, _ = samples
    x = as_float(images[:N])
    requests = [tensor_request(x[i]) if i % 2 else png_request(images[i]) for i in range(N)]
    call = stub.CheckStream(iter(requests), metadata=(("x-request-id", "s"),), timeout=30)
    # A stream carries its id in initial metadata, before the first response
    assert ("x-request-id", "s") in call.initial_metadata()
    responses = list(call)
    assert len(responses) == N
    for i, response in enumerate(responses):
        assert response.request_id == f"s/{i}"
        assert_matches(response, reference, i)


def test_get_info(stub: pb_grpc.ReliabilityStub, sentry: Sentry):
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    manifest = sentry.bundle.manifest
    assert list(info.input.shape) == [1, 28, 28]
    assert info.input.dtype == pb.FLOAT32
    assert (info.input.min_value, info.input.max_value) == (0.0, 1.0)
    assert list(info.input.mean) == [] and list(info.input.std) == []
    assert list(info.labels) == [str(d) for d in range(10)]
    assert list(info.feature_names) == [c["name"] for c in manifest["feature_schema"]]
    assert info.threshold == pytest.approx(manifest["threshold"])
    assert info.target_fpr == pytest.approx(manifest["target_fpr"])
    assert list(info.kinds) == manifest["kinds"]
    assert info.model_fingerprint == manifest["model_fingerprint"]
    assert info.versions["torch"] == manifest["versions"]["torch"]
    assert info.versions["server.grpcio"] == grpc.__version__
    assert info.max_batch_size >= 1


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"gradsentry.v1.Reliability", "grpc.health.v1.Health"} <= names
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="gradsentry.v1.Reliability"
    )
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert reply.file_descriptor_response.file_descriptor_proto


def _tensor(dtype: int, shape: list[int], data: bytes) -> pb.CheckRequest:
    return pb.CheckRequest(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data))


ONE = np.zeros((1, 28, 28), np.float32)
NAN = ONE.copy()
NAN[0, 3, 3] = np.nan
INF = ONE.copy()
INF[0, 0, 0] = np.inf
BIG = ONE.copy()
BIG[0, 5, 5] = 1.5


def _png(size: tuple[int, int]) -> pb.CheckRequest:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format="PNG")
    return pb.CheckRequest(image=pb.EncodedImage(data=buf.getvalue()))


MALFORMED = {
    "unspecified dtype": (
        _tensor(pb.DTYPE_UNSPECIFIED, [1, 28, 28], ONE.tobytes()),
        "DTYPE_UNSPECIFIED",
    ),
    "unknown dtype enum": (_tensor(42, [1, 28, 28], ONE.tobytes()), "unknown tensor dtype 42"),
    "wrong shape": (_tensor(pb.FLOAT32, [1, 32, 32], ONE.tobytes()), "wrong tensor shape"),
    "byte count": (_tensor(pb.FLOAT32, [1, 28, 28], ONE.tobytes()[:-4]), "bytes but shape"),
    "float64 bytes as float32": (
        _tensor(pb.FLOAT32, [1, 28, 28], ONE.astype(np.float64).tobytes()),
        "needs 3136",
    ),
    "nan": (_tensor(pb.FLOAT32, [1, 28, 28], NAN.tobytes()), "1 NaN"),
    "inf": (_tensor(pb.FLOAT32, [1, 28, 28], INF.tobytes()), "1 Inf"),
    "out of range": (_tensor(pb.FLOAT32, [1, 28, 28], BIG.tobytes()), "out of range"),
    "empty request": (pb.CheckRequest(), "empty request"),
    "empty tensor data": (_tensor(pb.FLOAT32, [1, 28, 28], b""), "empty tensor data"),
    "empty image": (pb.CheckRequest(image=pb.EncodedImage()), "empty image"),
    "undecodable png": (
        pb.CheckRequest(image=pb.EncodedImage(data=b"\x89PNG\r\n\x1a\nnot really")),
        "undecodable image",
    ),
    "wrong image size": (_png((32, 28)), "wrong image size 32x28"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_invalid_argument(stub: pb_grpc.ReliabilityStub, case: str):
    request, message = MALFORMED[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_malformed_item_in_batch_and_stream_names_its_index(
    stub: pb_grpc.ReliabilityStub, samples
) -> None:
    good = tensor_request(as_float(samples[0][:1])[0])
    bad = MALFORMED["nan"][0]
    with pytest.raises(grpc.RpcError) as info:
        stub.CheckBatch(pb.CheckBatchRequest(requests=[good, good, bad]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests 2:" in info.value.details() and "NaN" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.CheckBatch(pb.CheckBatchRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stream = stub.CheckStream(iter([good, bad, good]), timeout=30)
    assert next(stream).predicted_class >= 0
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream message 1:" in info.value.details()


def test_still_serves_identically_after_errors(
    stub: pb_grpc.ReliabilityStub, samples, reference
) -> None:
    images, _ = samples
    x = as_float(images[:N])
    for request, _ in MALFORMED.values():
        with pytest.raises(grpc.RpcError):
            stub.Check(request, timeout=10)
    for i in range(N):
        assert_matches(stub.Check(tensor_request(x[i]), timeout=30), reference, i)
