"""Graceful drain of a real ``gradsentry serve`` process, counted at the client.

SIGTERM lands while 100 unary calls, a CheckBatch of 8 and 16 streams (4 messages each) are
in flight: queued in the server's batcher, computing in the model worker, or still on their
way in (received by gRPC, not yet handed to a handler, when SIGTERM comes early). No call
may end CANCELLED: every call the server had taken in gets its full answer, the others get
UNAVAILABLE, calls made after health turned NOT_SERVING get UNAVAILABLE, and the process
exits 0 within its grace period. Four rounds, each with its own process and SIGTERM at
another moment.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detectors.sentry import Sentry
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.transport import grpc_defaults as transport
from tests.servers import WAIT, ServerProcess, serve_process, spawn_serve, tensor_request

UNARY, STREAMS, PER_STREAM, BATCH = 100, 16, 4, 8
GRACE = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The batcher holds a batch up to 3 s for company, so SIGTERM lands while calls are queued.
HOLDING = {
    "max_batch_size": 256,
    "max_delay_ms": 3000,
    "dispatch_when_idle": False,
    "queue_size": 512,
    "grace_seconds": GRACE,
}
# For SIGTERM during the computation: the model batch is exactly every input, so it leaves
# the queue the moment the last one is queued (however slowly the calls arrive; the 60 s
# wait is never reached); the CheckBatch is sent once the rest are queued, so "queue empty
# again, no answer back" then means the batch is in the worker.
COMPUTING = {
    **HOLDING,
    "max_batch_size": UNARY + STREAMS * PER_STREAM + BATCH,
    "max_delay_ms": 60_000,
}
# When SIGTERM is sent: once every input is queued; once the batch has left the queue for
# the model worker and is computing there (no answer back yet); once the first input is
# queued; at once, while the calls are still arriving (some received by gRPC and not yet
# handed to a handler).
MOMENTS = ("all_queued", "computing", "first_queued", "at_once")


def stream_outcome(stub: pb_grpc.ReliabilityStub, requests: list[pb.CheckRequest]):
    """(responses received, final status code) of one CheckStream."""
    responses: list[pb.CheckResponse] = []
    call = stub.CheckStream(iter(requests), timeout=WAIT)
    try:
        for response in call:
            responses.append(response)
    except grpc.RpcError:
        pass
    return responses, call.code()


def wait_queued(server: ServerProcess, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while server.metric("gradsentry_queue_depth") < count:
        assert time.monotonic() < deadline, "the calls never reached the queue"
        time.sleep(0.02)


def wait_dispatched(server: ServerProcess) -> None:
    """Until the queue is empty again: the batcher has handed its batch to the worker."""
    deadline = time.monotonic() + WAIT
    while server.metric("gradsentry_queue_depth") > 0:
        assert time.monotonic() < deadline, "the batch never left the queue"
        time.sleep(0.005)


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigterm_answers_every_accepted_call_and_cancels_none(
    moment: str, tmp_path: Path, samples, sentry: Sentry
) -> None:
    images = samples[0].astype(np.float32) / 255.0
    total = UNARY + STREAMS * PER_STREAM  # inputs of the unary calls and streams
    x = np.stack([images[i % len(images)] for i in range(total)])[:, None]  # [164, 1, 28, 28]
    reference = sentry.check(torch.from_numpy(x)).predicted
    requests = [tensor_request(x[i]) for i in range(total)]
    with (
        serve_process(tmp_path, **(COMPUTING if moment == "computing" else HOLDING)) as server,
        grpc.insecure_channel(server.target) as channel,
        ThreadPoolExecutor(STREAMS) as pool,
    ):
        stub = pb_grpc.ReliabilityStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=WAIT
        )
        assert next(watch).status == SERVING

        def send_batch() -> grpc.Future:
            return stub.CheckBatch.future(
                pb.CheckBatchRequest(requests=requests[:BATCH]), timeout=WAIT
            )

        unary = [stub.Check.future(requests[i], timeout=WAIT) for i in range(UNARY)]
        # For "computing" the CheckBatch goes last: its inputs complete the model batch.
        batch = None if moment == "computing" else send_batch()
        streams = [
            pool.submit(
                stream_outcome,
                stub,
                requests[UNARY + s * PER_STREAM : UNARY + (s + 1) * PER_STREAM],
            )
            for s in range(STREAMS)
        ]
        if moment == "all_queued":
            wait_queued(server, total + BATCH)
        elif moment == "computing":
            wait_queued(server, total)  # the model batch waits for the last 8 inputs
            batch = send_batch()
            wait_dispatched(server)  # full: it left the queue for the worker at once
        elif moment == "first_queued":
            wait_queued(server, 1)
        queued = server.metric("gradsentry_queue_depth")  # taken in before SIGTERM
        sigterm = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        back = sum(call.done() for call in unary)  # answers the client had at SIGTERM

        # Health turns NOT_SERVING (pushed to the watcher); then new calls are refused.
        assert next(watch).status == NOT_SERVING
        late = [stub.Check.future(requests[0], timeout=WAIT) for _ in range(10)]
        late_stream = stream_outcome(stub, requests[:2])

        codes = [call.code() for call in unary]
        outcomes = [s.result(WAIT) for s in streams]
        answered = 0
        for i, call in enumerate(unary):
            if call.code() == grpc.StatusCode.OK:
                assert call.result().predicted_class == int(reference[i])
                answered += 1
        for s, (responses, _) in enumerate(outcomes):
            for k, response in enumerate(responses):  # answers come in request order
                assert response.predicted_class == int(reference[UNARY + s * PER_STREAM + k])
            answered += len(responses)

        if batch.code() == grpc.StatusCode.OK:
            got = [r.predicted_class for r in batch.result().responses]
            assert got == [int(c) for c in reference[:BATCH]]
            answered += BATCH
        all_codes = [*codes, batch.code(), *(code for _, code in outcomes)]
        assert grpc.StatusCode.CANCELLED not in all_codes, all_codes
        assert set(all_codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, all_codes
        for responses, code in outcomes:  # a stream is cut only by the drain, never mid-way
            assert code == grpc.StatusCode.UNAVAILABLE or len(responses) == PER_STREAM
        assert answered >= queued  # every input taken in before SIGTERM was answered
        if moment in ("all_queued", "computing"):
            assert answered == total + BATCH
        if moment == "computing":  # SIGTERM landed while the one batch was computing
            assert back == 0, f"{back} answers were back before SIGTERM: it came too late"
        assert {call.code() for call in late} == {grpc.StatusCode.UNAVAILABLE}
        assert late_stream == ([], grpc.StatusCode.UNAVAILABLE)
        # The drain ends the health watch too (it would otherwise hold the stop).
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE

        assert server.proc.wait(timeout=GRACE + WAIT) == 0
        assert time.monotonic() - sigterm < GRACE
    assert "Traceback" not in server.log_text()


def test_a_grace_period_that_runs_out_ends_calls_unavailable(tmp_path: Path, samples) -> None:
    """The batch is held 60 s, the grace is 2 s: the calls still waiting when it runs out
    end UNAVAILABLE with the reason (never CANCELLED), and the process exits 0 soon after."""
    held = {**HOLDING, "max_delay_ms": 60_000, "grace_seconds": 2.0}
    x = (samples[0][:8].astype(np.float32) / 255.0)[:, None]
    with (
        serve_process(tmp_path, **held) as server,
        grpc.insecure_channel(server.target) as channel,
        ThreadPoolExecutor(2) as pool,
    ):
        stub = pb_grpc.ReliabilityStub(channel)
        calls = [stub.Check.future(tensor_request(x[i]), timeout=WAIT) for i in range(6)]
        streams = [pool.submit(stream_outcome, stub, [tensor_request(x[6 + s])]) for s in (0, 1)]
        wait_queued(server, 8)
        sigterm = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        outcomes = [(call.code(), call.details()) for call in calls]
        outcomes += [(code, "") for _, code in (s.result(WAIT) for s in streams)]
        assert {code for code, _ in outcomes} == {grpc.StatusCode.UNAVAILABLE}, outcomes
        assert all(
            "grace period ran out" in details for details, _ in [(d, c) for c, d in outcomes[:6]]
        )
        assert server.proc.wait(timeout=WAIT) == 0
        # Grace, then the cut calls' answers (DRAIN_CUT_SECONDS), the model worker's stop
        # (~1 s) and the interpreter's exit: seconds, not the 60 s the batch was held for.
        assert time.monotonic() - sigterm < 2.0 + 8.0
    assert "Traceback" not in server.log_text()


def test_serve_chooses_its_grpc_transport(tmp_path: Path) -> None:
    """Started without GRPC_EXPERIMENTS, ``gradsentry serve`` sets its own before grpc
    loads (and serves on it)."""
    with serve_process(tmp_path) as server:
        text = server.log_text()
    assert f"gRPC core experiments: {transport.SERVER_EXPERIMENTS!r}" in text, text


def test_sigterm_while_starting_stops_once_started(tmp_path: Path) -> None:
    """SIGTERM during the warm-up (a pod stopped while it starts) is not fatal: start-up
    finishes, then the server stops at once with exit 0, nothing logged as a crash."""
    # A warm-up batch of 256 inputs: far longer than the 10 ms between looks at the log.
    proc, log_path = spawn_serve(tmp_path, max_batch_size=256, queue_size=512)
    try:
        deadline = time.monotonic() + WAIT
        while "warming up" not in (text := log_path.read_text(errors="replace")):
            assert proc.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, log_path.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    text = log_path.read_text(errors="replace")
    assert "while starting: stopping once started" in text, text
    assert "gradsentry serving" in text and "Traceback" not in text, text
