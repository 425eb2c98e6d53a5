"""The model worker process: same answers as in-process, pickle-free messages, and a
worker that dies is replaced without taking the server down."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detectors.sentry import Verdicts
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import build_config
from service.engine.batcher import Batcher
from service.engine.pipeline import BasePipeline
from service.engine.wire import WireError, pack, pack_verdicts, unpack, unpack_verdicts
from service.engine.worker import ProcessPipeline, start_pipeline
from service.loader import ModelLoadError
from service.priority import nice_of
from service.server import SentryServer, create_server
from tests.servers import WAIT, serve_process, tensor_request


def config(**settings: object):
    return build_config(
        {"port": 0, "metrics_port": 0, "device": "cpu", "torch_threads": 1, **settings}
    )


def demo_digits(samples, n: int) -> list[np.ndarray]:
    """n demo digits as float32 arrays [1, 1, 28, 28] in [0, 1]."""
    x = samples[0][:n].astype(np.float32) / 255.0
    return [x[i][None, None] for i in range(n)]


def test_messages_round_trip_and_refuse_what_is_not_numeric() -> None:
    arrays = {"x": np.arange(12, dtype="<f4").reshape(3, 4), "n": np.array([1, 2], np.int64)}
    meta, back = unpack(pack({"op": "check", "k": [1, "a"]}, arrays))
    assert meta == {"op": "check", "k": [1, "a"]}
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name], a)
        assert back[name].dtype == a.dtype
    with pytest.raises(WireError, match="numeric only"):
        pack({}, {"o": np.array([object()], dtype=object)})
    good = pack({"op": "x"}, {"x": np.zeros(3)})
    for bad, why in ((good[:-1], "malformed"), (good + b"\0", "trailing"), (b"\1", "malformed")):
        with pytest.raises(WireError, match=why):
            unpack(bad)

    v = Verdicts(
        logits=np.ones((2, 3), np.float32),
        probabilities=np.full((2, 3), 1 / 3, np.float32),
        score=np.array([0.1, 0.9]),
        flagged=np.array([False, True]),
        kind_scores={"ood": np.array([0.2, 0.3]), "adversarial": np.array([0.5, 0.6])},
        features=np.arange(8.0).reshape(2, 4),
        timings={"forward": 0.5},
    )
    w = unpack_verdicts(*unpack(pack_verdicts(v)))
    assert list(w.kind_scores) == ["ood", "adversarial"]  # the order names the kinds
    assert w.timings == v.timings and w.kind == v.kind
    for name in ("logits", "probabilities", "score", "flagged", "features"):
        np.testing.assert_array_equal(getattr(w, name), getattr(v, name))


def test_the_worker_process_answers_like_the_inline_pipeline(samples) -> None:
    torch.set_num_threads(1)
    inline = start_pipeline(config(model_worker="inline"))
    remote = start_pipeline(config(model_worker="process"))
    try:
        assert isinstance(remote, ProcessPipeline) and not isinstance(inline, ProcessPipeline)
        assert remote.pid is not None and remote.pid != os.getpid()
        for p in (inline, remote):
            p.warm_up()
        assert remote.min_rows == inline.min_rows
        assert remote.spec == inline.spec and remote.manifest == inline.manifest
        assert remote.feature_names == inline.feature_names and remote.kinds == inline.kinds
        x = demo_digits(samples, 13)
        for batch in ([x[0]], x[:5], x):
            for a, b in zip(inline.run(batch), remote.run(batch), strict=True):
                assert (a.predicted_class, a.label, a.flagged, a.kind) == (
                    b.predicted_class,
                    b.label,
                    b.flagged,
                    b.kind,
                )
                np.testing.assert_allclose(b.features, a.features, rtol=1e-9, atol=0)
                np.testing.assert_allclose(b.probabilities, a.probabilities, rtol=1e-9, atol=0)
                assert b.score == pytest.approx(a.score, rel=1e-9, abs=0)
                assert b.kind_scores == pytest.approx(a.kind_scores, rel=1e-9, abs=0)
    finally:
        inline.close()
        remote.close()
    assert remote.pid is None  # closed: the child has exited


@pytest.mark.parametrize("worker", ["process", "inline"])
def test_a_worker_that_cannot_load_says_why(worker: str, tmp_path) -> None:
    weights = tmp_path / "missing.pt"
    with pytest.raises(ModelLoadError, match=r"missing\.pt"):
        start_pipeline(config(model_worker=worker, model_weights=str(weights)))


@pytest.fixture()
def process_server() -> Iterator[tuple[SentryServer, grpc.Channel]]:
    torch.set_num_threads(1)
    running, port = create_server(config(model_worker="process", max_delay_ms=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield running, channel
    channel.close()
    running.stop(None).wait(WAIT)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_killed_worker_is_replaced_and_the_server_keeps_serving(process_server, samples):
    running, channel = process_server
    stub = pb_grpc.ReliabilityStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    pipeline = running.plane.pipeline
    assert isinstance(pipeline, BasePipeline) and isinstance(pipeline, ProcessPipeline)
    x = demo_digits(samples, 1)[0][0]
    request = pb.CheckRequest(
        tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=x.astype("<f4").tobytes()),
        return_features=True,
    )
    before = stub.Check(request, timeout=WAIT)

    def same_answer(reply: pb.CheckResponse) -> None:
        assert (reply.predicted_class, reply.verdict) == (before.predicted_class, before.verdict)
        assert reply.score == pytest.approx(before.score, rel=1e-9)
        np.testing.assert_allclose(reply.features, before.features, rtol=1e-9)

    first = pipeline.pid
    assert first is not None

    # Killed while idle: noticed at once, and the next call starts a new worker.
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: pipeline.pid is None, "the dead worker was not noticed")
    same_answer(stub.Check(request, timeout=WAIT))
    second = pipeline.pid
    assert pipeline.restarts == 1 and second not in (None, first)

    # Killed while it holds a batch: that call fails with a retryable status that says
    # why, the server stays SERVING, and the next call is answered by a new worker.
    os.kill(second, signal.SIGSTOP)
    call = stub.Check.future(request, timeout=WAIT)
    wait_for(lambda: len(pipeline._pending) == 1, "the batch never reached the worker")
    os.kill(second, signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as info:
        call.result()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "model worker died" in info.value.details()
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
    same_answer(stub.Check(request, timeout=WAIT))
    assert pipeline.restarts == 2 and pipeline.pid not in (None, first, second)
    assert nice_of(pipeline.pid) == pipeline.launcher_nice
    assert running.plane.batcher.stats().peak_in_flight >= 1


def test_the_batcher_keeps_two_batches_with_the_worker(samples) -> None:
    """With a worker process the next batch is handed over while one computes, and every
    answer is still the one the input gets alone."""
    torch.set_num_threads(1)
    pipeline = start_pipeline(config(model_worker="process", max_batch_size=4))
    try:
        pipeline.warm_up()
        assert pipeline.max_in_flight == 2
        inputs = demo_digits(samples, 24)
        alone = [pipeline.run([x])[0] for x in inputs]
        batcher = Batcher(pipeline, max_batch_size=4, max_delay_ms=1, queue_size=64)
        try:
            futures = [batcher.submit(x) for x in inputs]
            results = [f.result(WAIT) for f in futures]
        finally:
            batcher.close(drain=True, timeout=WAIT)
        stats = batcher.stats()
        assert stats.scored == 24 and stats.batches >= 6 and stats.peak_in_flight == 2
        for a, b in zip(alone, results, strict=True):
            assert (a.predicted_class, a.flagged, a.kind) == (b.predicted_class, b.flagged, b.kind)
            np.testing.assert_allclose(b.features, a.features, rtol=1e-9, atol=0)
            assert b.score == pytest.approx(a.score, rel=1e-9, abs=0)
    finally:
        pipeline.close()


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_the_server_process_runs_below_its_model_worker(tmp_path: Path, samples) -> None:
    """The gRPC process runs server_nice below the worker's CPU priority, so the model, the
    bottleneck, runs first when both want a core; a restarted worker keeps the worker's
    priority, not the lowered one of the server (a real serve process: lowering a process
    cannot be undone without privileges, so no test lowers its own)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with serve_process(tmp_path, server_nice=5, max_delay_ms=0) as server:
        threads = [int(t) for t in os.listdir(f"/proc/{server.proc.pid}/task")]
        (worker,) = children(server.proc.pid)
        assert nice_of(worker) == base
        # Every thread of the server but the one that launches workers is lowered.
        lowered = [t for t in threads if os.getpriority(os.PRIO_PROCESS, t) == min(19, base + 5)]
        assert len(lowered) == len(threads) - 1
        os.kill(worker, signal.SIGKILL)
        x = demo_digits(samples, 1)[0][0]
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ReliabilityStub(channel)
            for _ in range(50):  # the first call may meet the dead worker: UNAVAILABLE
                try:
                    stub.Check(tensor_request(x), timeout=WAIT)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
        (restarted,) = children(server.proc.pid)
        assert restarted != worker and nice_of(restarted) == base
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
