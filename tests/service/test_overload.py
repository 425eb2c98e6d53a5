"""Overload and deadlines: a full queue answers RESOURCE_EXHAUSTED at once and never grows
past queue_size; inputs whose deadline passed are dropped without being computed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detectors.sentry import Sentry
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import build_config, load_config
from service.engine.batcher import Batcher
from service.engine.pipeline import Pipeline, Result
from service.errors import QueueFullError
from service.server import SentryServer, create_server
from tests.servers import WAIT, calls_ended, tensor_request, wait_calls_ended


class CountingPipeline(Pipeline):
    """The real demo pipeline, counting the inputs it computes; ``gate`` can hold it."""

    def __init__(self, sentry: Sentry) -> None:
        spec = load_config(environ={}).input_spec()
        super().__init__(sentry, spec, torch.device("cpu"), max_batch_size=32)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.computed = 0

    def run(self, inputs: Sequence[np.ndarray], pad: bool = True) -> list[Result]:
        self.computed += len(inputs)
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise RuntimeError("gate never opened")
        return super().run(inputs, pad)


def demo_digits(samples, n: int) -> list[np.ndarray]:
    """n demo digits as float32 arrays [1, 1, 28, 28] in [0, 1]."""
    x = samples[0][:n].astype(np.float32) / 255.0
    return [x[i][None, None] for i in range(n)]


def request(x: np.ndarray) -> pb.CheckRequest:
    return tensor_request(x)


def start(**settings: object) -> tuple[SentryServer, grpc.Channel]:
    torch.set_num_threads(1)
    config = build_config({"port": 0, "metrics_port": 0, "device": "cpu", **settings})
    running, port = create_server(config)
    return running, grpc.insecure_channel(f"127.0.0.1:{port}")


def test_a_full_queue_refuses_at_once_and_stays_bounded(sentry, samples) -> None:
    pipeline = CountingPipeline(sentry)
    batcher = Batcher(pipeline, max_batch_size=1, max_delay_ms=0, queue_size=4)
    inputs = demo_digits(samples, 8)
    try:
        pipeline.gate.clear()
        held = batcher.submit(inputs[0])  # taken by the worker, which waits at the gate
        assert pipeline.entered.wait(WAIT)
        queued = [batcher.submit(x) for x in inputs[1:5]]
        assert batcher.depth == 4
        with pytest.raises(QueueFullError, match="4 of 4 queue slots"):
            batcher.submit(inputs[5])
        # A multi-input call is taken whole or not at all.
        queued[0].cancel()
        with pytest.raises(QueueFullError, match="2 needed"):
            batcher.submit_many(inputs[5:7])
        assert batcher.depth == 4
        pipeline.gate.set()
        assert held.result(WAIT).predicted_class >= 0
        assert all(f.result(WAIT).predicted_class >= 0 for f in queued[1:])
        # Room again: accepted.
        assert batcher.submit(inputs[7]).result(WAIT).predicted_class >= 0
    finally:
        pipeline.gate.set()
        batcher.close()
    stats = batcher.stats()
    assert stats.peak_depth == 4  # never more than queue_size waiting
    assert (stats.rejected, stats.cancelled, stats.scored) == (3, 1, 5)
    assert pipeline.computed == 5


def test_expired_inputs_are_not_computed(sentry, samples) -> None:
    pipeline = CountingPipeline(sentry)
    batcher = Batcher(pipeline, max_batch_size=8, max_delay_ms=1.0, queue_size=64)
    inputs = demo_digits(samples, 10)
    try:
        pipeline.gate.clear()
        batcher.submit(inputs[0])
        assert pipeline.entered.wait(WAIT)
        soon = time.monotonic() + 0.02
        doomed = [batcher.submit(x, deadline=soon) for x in inputs[1:9]]
        kept = batcher.submit(inputs[9], deadline=time.monotonic() + 600)
        while time.monotonic() <= soon:  # the deadline passes while they are queued
            time.sleep(0.01)
        pipeline.gate.set()
        assert kept.result(WAIT).predicted_class >= 0
        for f in doomed:
            with pytest.raises(TimeoutError):
                f.result(WAIT)
    finally:
        pipeline.gate.set()
        batcher.close()
    assert pipeline.computed == 2  # the held input and the one with time left
    assert batcher.stats().expired == 8


@pytest.fixture(scope="module")
def tiny_queue() -> Iterator[tuple[SentryServer, grpc.Channel]]:
    """One input per batch, two queue slots, many handler threads: easily overloaded."""
    running, channel = start(max_batch_size=1, max_delay_ms=0, queue_size=2, max_workers=64)
    yield running, channel
    channel.close()
    running.stop(None).wait(10)


def test_overload_answers_resource_exhausted_and_recovers(tiny_queue, samples) -> None:
    running, channel = tiny_queue
    stub = pb_grpc.ReliabilityStub(channel)
    x = demo_digits(samples, 1)[0]
    expected = stub.Check(request(x), timeout=WAIT)
    codes: list[grpc.StatusCode] = []
    for _ in range(10):  # a burst of 48 concurrent calls against 2 slots; repeat if lucky
        calls = [stub.Check.future(request(x), timeout=WAIT) for _ in range(48)]
        for call in calls:
            codes.append(call.code())
            if call.code() == grpc.StatusCode.OK:
                assert call.result().score == pytest.approx(expected.score, abs=1e-6)
            else:
                assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "overloaded" in call.details() and "retry" in call.details()
        if grpc.StatusCode.RESOURCE_EXHAUSTED in codes:
            break
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    stats = running.plane.batcher.stats()
    assert stats.peak_depth <= 2 and stats.rejected >= 1
    # Still healthy and answering the same afterwards.
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert stub.Check(request(x), timeout=WAIT).score == pytest.approx(expected.score, abs=1e-6)


BACKLOG = 1536


def test_a_call_whose_deadline_passes_in_the_queue_is_not_computed(samples) -> None:
    running, channel = start(max_batch_size=1, max_delay_ms=0, queue_size=2048, max_workers=8)
    stub = pb_grpc.ReliabilityStub(channel)
    batcher = running.plane.batcher
    try:
        x = demo_digits(samples, 1)[0]
        # Keep the worker busy: BACKLOG inputs scored one by one take about 7 s on 2 cores,
        # so the calls below meet a busy worker on a machine several times faster.
        backlog = stub.CheckBatch.future(
            pb.CheckBatchRequest(requests=[request(x)] * BACKLOG), timeout=WAIT
        )
        for _ in range(int(WAIT * 100)):
            if batcher.stats().submitted >= BACKLOG:
                break
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(request(x), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The client's own timer says DEADLINE_EXCEEDED either way; the server must have
        # ended the call so too (not OK, not CANCELLED: interceptors.CLIENT_DEADLINE_SLACK),
        # and counted it. On failure, every code the server recorded for Check.
        ended = wait_calls_ended(running, "Check", "DEADLINE_EXCEEDED", 1)
        assert ended == 1, {c.name: calls_ended(running, "Check", c.name) for c in grpc.StatusCode}
        # A client that cancels 0.3 s before its deadline is counted so too (within
        # CLIENT_DEADLINE_SLACK); one that cancels with most of its time left, CANCELLED.
        near = stub.Check.future(request(x), timeout=1.0)
        far = stub.Check.future(request(x), timeout=WAIT)
        time.sleep(0.7)
        assert not backlog.done(), "the backlog ended before the cancels: nothing was tested"
        near.cancel()
        far.cancel()
        assert wait_calls_ended(running, "Check", "DEADLINE_EXCEEDED", 2) == 2
        assert wait_calls_ended(running, "Check", "CANCELLED", 1) == 1
        assert calls_ended(running, "Check", "OK") == 0
        assert len(backlog.result().responses) == BACKLOG
        # The batcher drops the late input when it comes to it, which may be a moment
        # after the backlog's last answer reached the client.
        deadline = time.monotonic() + WAIT
        while (stats := batcher.stats()).submitted > stats.scored + stats.expired + (
            stats.cancelled
        ) and time.monotonic() < deadline:
            time.sleep(0.01)
        # The late call never reached the model: dropped as expired or cancelled.
        assert stats.scored == BACKLOG
        assert stats.submitted - stats.scored == stats.expired + stats.cancelled
    finally:
        channel.close()
        running.stop(None).wait(10)


def test_the_grpc_backlog_is_bounded_too(samples) -> None:
    # Two handler threads and two queue slots: at most 4 calls are taken in at once, the
    # rest are refused by gRPC before they hold any memory.
    running, channel = start(max_batch_size=1, max_delay_ms=0, queue_size=2, max_workers=2)
    stub = pb_grpc.ReliabilityStub(channel)
    try:
        x = demo_digits(samples, 1)[0]
        codes: set[grpc.StatusCode] = set()
        for _ in range(10):
            calls = [stub.Check.future(request(x), timeout=WAIT) for _ in range(40)]
            codes |= {c.code() for c in calls}
            if grpc.StatusCode.RESOURCE_EXHAUSTED in codes:
                break
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        # Two threads, each waiting on one input, cannot overfill two slots: gRPC itself
        # refused the excess.
        stats = running.plane.batcher.stats()
        assert stats.rejected == 0 and stats.peak_depth <= 2
    finally:
        channel.close()
        running.stop(None).wait(10)
