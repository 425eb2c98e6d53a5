"""The load benchmark's client load against a real in-process server on 127.0.0.1: every
client is a concurrent caller with its own channel, only calls inside the window count,
and failed calls are counted by status code, not as requests/s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest

from benchmarks.load import check_calls, demo_requests, drive
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from tests.servers import demo_server

CLIENTS = 4


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with demo_server(GRADSENTRY_MODEL_WORKER="inline") as (_, port):
        yield f"127.0.0.1:{port}"


def test_clients_call_concurrently_and_only_the_window_counts(address: str) -> None:
    in_flight = most = 0
    inner = check_calls(demo_requests())

    def counting(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[object]]:
        call = inner(channel)

        async def one(i: int) -> object:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await call(i)
            finally:
                in_flight -= 1

        return one

    out = drive(address, CLIENTS, warmup=0.3, duration=1.5, calls=counting)
    assert most == CLIENTS  # every client had a call out at once
    assert out.errors == 0 and out.error_codes == {}
    assert out.requests > 0
    assert out.requests_per_second == pytest.approx(out.requests / 1.5)
    assert out.calls_made > out.requests  # warm-up calls (and the last, cut one) made, not counted
    assert 0 < out.p50_ms <= out.p99_ms


def test_failed_calls_count_as_errors_by_code(address: str) -> None:
    bad = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=b"\0" * 3))

    def malformed(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[object]]:
        check = pb_grpc.ReliabilityStub(channel).Check
        return lambda i: check(bad, timeout=10)

    out = drive(address, CLIENTS, warmup=0.0, duration=0.5, calls=malformed)
    assert out.requests > 0
    assert out.error_codes == {"INVALID_ARGUMENT": out.requests} and out.errors == out.requests
    assert out.requests_per_second == 0.0
