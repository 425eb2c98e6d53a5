"""Dynamic batching: the Batcher on the real demo pipeline, and batched gRPC calls.

A batched input must get exactly the answer it gets alone; concurrent calls must really be
grouped. Where a test needs the worker held still it uses ``GatedPipeline``: the real
pipeline, whose ``run`` first waits for a gate and records the batch sizes it was given.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from detectors.sentry import Sentry
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import build_config, load_config
from service.engine.batcher import Batcher, BatcherClosedError
from service.engine.pipeline import Pipeline, Result
from service.metrics import Metrics
from service.server import SentryServer, create_server

WAIT = 60.0  # generous: the suite shares 2 cores


class GatedPipeline(Pipeline):
    """The real demo pipeline (warmed up and calibrated); each ``run`` waits for ``gate``
    and records its batch size."""

    def __init__(self, sentry: Sentry, max_batch_size: int = 64) -> None:
        spec = load_config(environ={}).input_spec()
        super().__init__(sentry, spec, torch.device("cpu"), max_batch_size)
        self.warm_up()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.runs: list[int] = []

    def run(self, inputs: Sequence[np.ndarray], pad: bool = True) -> list[Result]:
        self.runs.append(len(inputs))
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise RuntimeError("gate never opened")
        return super().run(inputs, pad)


def as_inputs(images: np.ndarray) -> list[np.ndarray]:
    """uint8 [N, 28, 28] -> N float32 arrays [1, 1, 28, 28] in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    return [x[i][None, None] for i in range(len(x))]


def assert_same(a: Result, b: Result) -> None:
    """Two results for one input agree (scores and features to 1e-6)."""
    assert a.predicted_class == b.predicted_class and a.flagged == b.flagged
    assert a.score == pytest.approx(b.score, abs=1e-6)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-6, atol=1e-9)
    for kind, s in a.kind_scores.items():
        assert s == pytest.approx(b.kind_scores[kind], abs=1e-6)


@pytest.fixture()
def gated(sentry: Sentry) -> Iterator[GatedPipeline]:
    pipeline = GatedPipeline(sentry)
    yield pipeline
    pipeline.gate.set()


def test_padding_makes_results_independent_of_the_batch_size(gated, samples) -> None:
    inputs = as_inputs(samples[0][:16])
    reference = gated.run(inputs)
    # min_rows depends on the CPU's kernels (8 on some machines, 16 on others with AMX).
    assert 1 <= gated.min_rows <= gated.max_batch_size
    for k in range(1, 17):
        for a, b in zip(gated.run(inputs[:k]), reference, strict=False):
            assert_same(a, b)
            assert a.timings["batch_size"] == k  # padding rows are not counted


def test_batched_results_equal_results_alone(gated: GatedPipeline, samples) -> None:
    inputs = as_inputs(samples[0][:16])
    one_by_one = Batcher(gated, max_batch_size=16, max_delay_ms=1.0, queue_size=64)
    try:
        alone = [one_by_one.submit(x).result(WAIT) for x in inputs]
    finally:
        one_by_one.close()
    assert gated.runs == [1] * 16
    batcher = Batcher(gated, max_batch_size=16, max_delay_ms=10_000, queue_size=64)
    try:
        gated.runs.clear()
        futures = batcher.submit_many(inputs)
        together = [f.result(WAIT) for f in futures]
    finally:
        batcher.close()
    # All 16 were queued at once: one batch, which left when full (not after the delay).
    assert gated.runs == [16]
    assert batcher.stats().largest_batch == 16 and batcher.stats().batches == 1
    for a, b in zip(together, alone, strict=True):
        assert_same(a, b)
        assert a.timings["batch_size"] == 16 and b.timings["batch_size"] == 1
        assert a.timings["queue"] >= 0


def test_concurrent_submits_are_grouped_up_to_max_batch_size(gated, samples) -> None:
    inputs = as_inputs(samples[0][:20])
    batcher = Batcher(gated, max_batch_size=8, max_delay_ms=200, queue_size=64)
    try:
        gated.gate.clear()
        first = batcher.submit(inputs[0])  # alone: waits 200 ms for company, then holds
        assert gated.entered.wait(WAIT)
        with ThreadPoolExecutor(max_workers=19) as pool:  # 19 callers submit concurrently
            rest = list(pool.map(batcher.submit, inputs[1:]))
        assert batcher.depth == 19
        gated.gate.set()
        results = [f.result(WAIT) for f in [first, *rest]]
    finally:
        batcher.close()
    # Queued while the worker was busy: they leave in full batches, then the remainder.
    assert gated.runs == [1, 8, 8, 3]
    assert batcher.depth == 0
    # The 19 threads reach the queue in any order, so only the first input's batch is known;
    # the others' batch sizes are compared as a multiset.
    assert results[0].timings["batch_size"] == 1
    assert Counter(r.timings["batch_size"] for r in results[1:]) == {8: 16, 3: 3}
    # Time in the queue is measured per input, from submit to its batch's start: the first
    # waited max_delay_ms for company.
    assert results[0].timings["queue"] >= 0.2
    assert all(r.timings["queue"] > 0 for r in results)


def test_batching_off_scores_one_input_per_batch(gated, samples) -> None:
    inputs = as_inputs(samples[0][:5])
    for max_batch_size, max_delay_ms in ((8, 0.0), (1, 50.0)):
        batcher = Batcher(gated, max_batch_size, max_delay_ms, queue_size=16)
        assert not batcher.batching
        gated.runs.clear()
        gated.gate.clear()
        futures = [batcher.submit(x) for x in inputs]
        gated.gate.set()
        assert all(f.result(WAIT).timings["batch_size"] == 1 for f in futures)
        batcher.close()
        assert gated.runs == [1] * 5


def test_expired_and_cancelled_inputs_are_dropped_unscored(gated, samples) -> None:
    inputs = as_inputs(samples[0][:6])
    batcher = Batcher(gated, max_batch_size=8, max_delay_ms=1.0, queue_size=16)
    try:
        gated.gate.clear()
        batcher.submit(inputs[0])
        assert gated.entered.wait(WAIT)
        expired = [batcher.submit(x, deadline=time.monotonic() + 0.01) for x in inputs[1:3]]
        cancelled = batcher.submit(inputs[3])
        live = [batcher.submit(x, deadline=time.monotonic() + 600) for x in inputs[4:]]
        assert cancelled.cancel()
        time.sleep(0.05)  # the short deadlines pass while the worker is busy
        gated.gate.set()
        for f in expired:
            with pytest.raises(TimeoutError, match="deadline passed"):
                f.result(WAIT)
        assert all(f.result(WAIT).predicted_class >= 0 for f in live)
    finally:
        batcher.close()
    # Only the first input and the two live ones reached the model.
    assert gated.runs == [1, 2]
    stats = batcher.stats()
    assert (stats.expired, stats.cancelled, stats.scored) == (2, 1, 3)


def test_close_drains_or_fails_the_queue_and_refuses_new_work(gated, samples) -> None:
    inputs = as_inputs(samples[0][:4])
    for drain in (True, False):
        batcher = Batcher(gated, max_batch_size=2, max_delay_ms=1.0, queue_size=8)
        gated.entered.clear()
        gated.gate.clear()
        held = batcher.submit(inputs[0])
        assert gated.entered.wait(WAIT)
        queued = [batcher.submit(x) for x in inputs[1:]]
        closer = threading.Thread(target=batcher.close, kwargs={"drain": drain})
        closer.start()
        for _ in range(int(WAIT * 100)):  # close() refuses work before joining the worker
            if batcher.closed:
                break
            time.sleep(0.01)
        with pytest.raises(BatcherClosedError, match="shutting down"):
            batcher.submit(inputs[0])
        gated.gate.set()
        closer.join(WAIT)
        assert held.result(WAIT).predicted_class >= 0
        if drain:
            assert all(f.result(WAIT).predicted_class >= 0 for f in queued)
        else:
            for f in queued:
                with pytest.raises(BatcherClosedError, match="stopped before"):
                    f.result(WAIT)
        assert not batcher._worker.is_alive()


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on(sentry, samples) -> None:
    pipeline = GatedPipeline(sentry)
    batcher = Batcher(pipeline, max_batch_size=4, max_delay_ms=1.0, queue_size=8)
    try:
        wrong = np.zeros((1, 1, 20, 20), np.float32)  # the model cannot take it
        with pytest.raises(RuntimeError):
            batcher.submit(wrong).result(WAIT)
        x = as_inputs(samples[0][:1])[0]
        assert_same(batcher.submit(x).result(WAIT), pipeline.run([x])[0])
    finally:
        batcher.close()


def test_batches_are_reported_to_metrics(gated, samples) -> None:
    registry = CollectorRegistry()
    batcher = Batcher(gated, 8, 5_000, 64, metrics=Metrics(registry))
    try:
        [f.result(WAIT) for f in batcher.submit_many(as_inputs(samples[0][:8]))]
    finally:
        batcher.close()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("gradsentry_batch_size_count") == 1
    assert sample("gradsentry_batch_size_sum") == 8
    assert sample("gradsentry_stage_duration_seconds_count", stage="queue") == 8
    for stage in ("forward", "backward", "statistics", "detector"):
        assert sample("gradsentry_stage_duration_seconds_count", stage=stage) == 1
    assert sample("gradsentry_queue_depth") == 0


def test_invalid_settings_are_refused(gated) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(gated, 0, 1.0, 8)
    with pytest.raises(ValueError, match="max_delay_ms"):
        Batcher(gated, 4, float("nan"), 8)
    with pytest.raises(ValueError, match="queue_size"):
        Batcher(gated, 4, 1.0, 0)


# -- through gRPC --------------------------------------------------------------------------


def tensor_request(x: np.ndarray) -> pb.CheckRequest:
    """x float32 [1, 1, 28, 28]."""
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=list(x.shape), data=x.astype("<f4").tobytes())
    return pb.CheckRequest(tensor=tensor, return_probabilities=True, return_features=True)


def assert_same_response(a: pb.CheckResponse, b: pb.CheckResponse) -> None:
    assert a.predicted_class == b.predicted_class and a.verdict == b.verdict
    assert a.kind == b.kind
    assert a.score == pytest.approx(b.score, abs=1e-6)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-6, atol=1e-9)
    for kind, s in a.kind_scores.items():
        assert s == pytest.approx(b.kind_scores[kind], abs=1e-6)


@pytest.fixture(scope="module")
def batching_server() -> Iterator[tuple[SentryServer, pb_grpc.ReliabilityStub]]:
    """A server that holds a batch until 16 inputs came (or 10 s passed)."""
    torch.set_num_threads(1)
    config = build_config(
        {
            "port": 0,
            "metrics_port": 0,
            "device": "cpu",
            "max_batch_size": 16,
            "max_delay_ms": 10_000,
            "max_workers": 32,
        }
    )
    running, port = create_server(config)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield running, pb_grpc.ReliabilityStub(channel)
    running.stop(None).wait(10)


def test_concurrent_checks_are_batched_and_answered_as_alone(
    batching_server, stub: pb_grpc.ReliabilityStub, samples
) -> None:
    running, batched_stub = batching_server
    inputs = as_inputs(samples[0][:16])
    before = running.plane.batcher.stats()
    # 16 concurrent calls: the batch leaves when the 16th arrives.
    calls = [batched_stub.Check.future(tensor_request(x), timeout=WAIT) for x in inputs]
    together = [c.result() for c in calls]
    stats = running.plane.batcher.stats()
    assert stats.scored - before.scored == 16
    assert stats.largest_batch > 1
    assert stats.batches - before.batches < 16
    # The session server with one client at a time: every input alone in its batch.
    alone = [stub.Check(tensor_request(x), timeout=WAIT) for x in inputs]
    for a, b in zip(together, alone, strict=True):
        assert_same_response(a, b)
    assert max(r.timings.queue_seconds for r in together) > 0


def test_one_stream_is_batched_with_itself(batching_server, stub, samples) -> None:
    running, batched_stub = batching_server
    inputs = as_inputs(samples[0][16:48])
    before = running.plane.batcher.stats()
    responses = list(batched_stub.CheckStream(iter(map(tensor_request, inputs)), timeout=WAIT))
    stats = running.plane.batcher.stats()
    assert stats.scored - before.scored == 32
    # The stream's messages were queued ahead of their answers and grouped.
    assert stats.batches - before.batches < 32
    for i, (response, x) in enumerate(zip(responses, inputs, strict=True)):
        assert response.request_id.endswith(f"/{i}")
        assert_same_response(response, stub.Check(tensor_request(x), timeout=WAIT))


def test_a_batch_call_larger_than_the_queue_is_refused(batching_server, samples) -> None:
    running, batched_stub = batching_server
    n = running.plane.batcher.queue_size + 1
    x = as_inputs(samples[0][:1])[0]
    with pytest.raises(grpc.RpcError) as info:
        batched_stub.CheckBatch(
            pb.CheckBatchRequest(requests=[tensor_request(x)] * n), timeout=WAIT
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "split the call" in info.value.details()


def test_a_bad_stream_message_ends_the_stream_after_the_answers_before_it(
    stub: pb_grpc.ReliabilityStub, samples
) -> None:
    inputs = as_inputs(samples[0][:6])
    requests = [tensor_request(x) for x in inputs]
    requests[3] = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28]))
    call = stub.CheckStream(iter(requests), timeout=WAIT)
    answered = []
    with pytest.raises(grpc.RpcError) as info:
        for response in call:
            answered.append(response)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream message 3" in info.value.details()
    assert [r.request_id.rsplit("/", 1)[1] for r in answered] == ["0", "1", "2"]


@pytest.mark.parametrize("when_idle", [True, False])
def test_an_idle_model_takes_a_batch_of_min_rows_without_waiting(
    gated: GatedPipeline, samples, when_idle: bool
) -> None:
    """With the model idle, a batch that holds min_rows inputs (the size smaller batches are
    padded to) leaves at once instead of waiting out a ten-minute delay; fewer inputs, or
    ``dispatch_when_idle=False``, wait for company."""
    inputs = as_inputs(samples[0][: gated.min_rows])
    batcher = Batcher(
        gated, max_batch_size=64, max_delay_ms=600_000, queue_size=64, dispatch_when_idle=when_idle
    )
    try:
        first = batcher.submit_many(inputs[:-1])
        time.sleep(0.5)  # room to (wrongly) leave early
        assert not any(f.done() for f in first) and batcher.depth == len(first)
        rest = batcher.submit(inputs[-1])
        if when_idle:
            results = [f.result(WAIT) for f in [*first, rest]]
            assert gated.runs == [gated.min_rows] and len(results) == gated.min_rows
        else:
            time.sleep(0.5)
            assert not rest.done() and batcher.depth == gated.min_rows and gated.runs == []
    finally:
        batcher.close(drain=False)
