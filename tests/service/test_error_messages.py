"""Error messages of a real ``gradsentry serve`` that a client can act on, and that fit.

A shape of 6,000 dimensions is quoted in part (quoted whole it overflows the client's
header limit and arrives as RESOURCE_EXHAUSTED); a value just over the range is printed
with the digits that show it; a request's own ``request_id`` obeys the header's rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from tests.servers import WAIT, serve_process, tensor_request


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.ReliabilityStub]:
    directory = tmp_path_factory.mktemp("messages")
    with (
        serve_process(directory, model_worker="inline") as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        yield pb_grpc.ReliabilityStub(channel)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    return info.value


def test_a_shape_of_6000_dimensions_is_quoted_in_part(stub) -> None:
    shape = [1] * 6000
    request = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=shape, data=bytes(4)))
    error = refusal(lambda: stub.Check(request, timeout=WAIT))
    assert "wrong tensor shape [1, 1, 1, 1, 1, 1, 1, 1, ...] (6000 dimensions)" in error.details()
    assert len(error.details()) < 300


def test_a_value_just_over_the_range_shows_its_digits(stub) -> None:
    x = np.zeros((1, 28, 28), np.float32)
    x[0, 3, 4] = np.float32(1.0000001)
    error = refusal(lambda: stub.Check(tensor_request(x), timeout=WAIT))
    assert "found [0.0, 1.0000001" in error.details(), error.details()
    assert "[0.0, 1.0]" in error.details()


def test_the_body_request_id_follows_the_header_rule(stub) -> None:
    x = np.zeros((1, 28, 28), np.float32)
    long_id = tensor_request(x)
    long_id.request_id = "r" * 10_000
    for call in (
        lambda: stub.Check(long_id, timeout=WAIT),
        lambda: stub.CheckBatch(pb.CheckBatchRequest(requests=[long_id]), timeout=WAIT),
        lambda: list(stub.CheckStream(iter([long_id]), timeout=WAIT)),
    ):
        error = refusal(call)
        assert "request_id must be 1-128 printable ASCII" in error.details()
        assert len(error.details()) < 200
    fine = tensor_request(x)
    fine.request_id = "r" * 128
    assert stub.Check(fine, timeout=WAIT).request_id == "r" * 128
