"""The load benchmark's client load against a real in-process server on 127.0.0.1: every
client is a concurrent caller with its own channel, only calls inside the window count,
failed calls are counted by status code, not as requests/s, and stream clients keep one
stream each (a new one only after a failed message) and end it cleanly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest

from benchmarks.load import check_calls, demo_requests, drive, stream_calls
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.server import SentryServer
from tests.servers import calls_ended, demo_server, wait_calls_ended

CLIENTS = 4
BAD = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=b"\0" * 3))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SentryServer, str]]:
    with demo_server(GRADSENTRY_MODEL_WORKER="inline") as (running, port):
        yield running, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def address(served: tuple[SentryServer, str]) -> str:
    return served[1]


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
    def malformed(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[object]]:
        check = pb_grpc.ReliabilityStub(channel).Check
        return lambda i: check(BAD, timeout=10)

    out = drive(address, CLIENTS, warmup=0.0, duration=0.5, calls=malformed)
    assert out.requests > 0
    assert out.error_codes == {"INVALID_ARGUMENT": out.requests} and out.errors == out.requests
    assert out.requests_per_second == 0.0


def test_stream_clients_keep_one_stream_each_and_end_it_cleanly(
    served: tuple[SentryServer, str],
) -> None:
    running, address = served
    before = calls_ended(running, "CheckStream", "OK")
    out = drive(address, CLIENTS, warmup=0.3, duration=1.5, calls=stream_calls(demo_requests()))
    assert out.errors == 0 and out.error_codes == {}
    assert out.requests > CLIENTS  # many messages per stream...
    assert out.calls_made > out.requests
    # ...on exactly one stream per client, each ended by the client with status OK
    expected = before + CLIENTS
    assert wait_calls_ended(running, "CheckStream", "OK", expected) == expected
    assert 0 < out.p50_ms <= out.p99_ms


def test_a_failed_stream_message_is_an_error_and_the_next_opens_a_new_stream(
    served: tuple[SentryServer, str],
) -> None:
    running, address = served
    before = calls_ended(running, "CheckStream", "INVALID_ARGUMENT")
    out = drive(address, CLIENTS, warmup=0.0, duration=0.5, calls=stream_calls([BAD]))
    assert out.requests > 0
    assert out.error_codes == {"INVALID_ARGUMENT": out.requests} and out.errors == out.requests
    assert out.requests_per_second == 0.0
    # every message failed its own stream: one stream per call made
    expected = before + out.calls_made
    assert wait_calls_ended(running, "CheckStream", "INVALID_ARGUMENT", expected) == expected
