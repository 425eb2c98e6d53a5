"""Batches reach the model worker through a shared buffer (service.engine.shared_batch):
bit for bit the answers of the socket path, pixels as uint8, a fresh buffer for a restarted
worker, nothing left behind, and the socket when no buffer can be made."""

from __future__ import annotations

import gc
import io
import os
import resource
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import build_config
from service.dataplane.codec import to_model
from service.engine.shared_batch import NAME, SharedBatchError, SharedBatches, slot_size
from service.engine.worker import ProcessPipeline
from service.server import create_server
from tests.servers import WAIT, tensor_request


def config(**settings: object):
    return build_config(
        {"port": 0, "metrics_port": 0, "device": "cpu", "torch_threads": 1, **settings}
    )


def mappings(pid: int) -> int:
    """Mappings of a shared batch buffer in process ``pid``."""
    return sum(
        f"memfd:{NAME}" in line for line in Path(f"/proc/{pid}/maps").read_text().split("\n")
    )


def descriptors(pid: int) -> int:
    """Open descriptors of a shared batch buffer in process ``pid``."""
    found = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found += f"memfd:{NAME}" in os.readlink(fd)
        except OSError:
            pass  # closed meanwhile
    return found


def shm_names() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir()} if shm.is_dir() else set()


def same_bits(a, b) -> bool:
    """Two Results answer bit for bit alike."""
    return (
        a.predicted_class == b.predicted_class
        and a.flagged == b.flagged
        and a.kind == b.kind
        and a.score == b.score
        and a.kind_scores == b.kind_scores
        and a.features.tobytes() == b.features.tobytes()
        and a.probabilities.tobytes() == b.probabilities.tobytes()
        and a.logits.tobytes() == b.logits.tobytes()
    )


def test_the_shared_buffer_and_the_socket_answer_bit_for_bit(samples) -> None:
    """The same batches — floats, pixels, a mix of both, padded or not — through the shared
    buffer and over the socket, to two real workers: the same bits. Pixels travel as uint8
    and answer as the floats they map to."""
    torch.set_num_threads(1)
    shared = ProcessPipeline(config(max_batch_size=8))
    socket = ProcessPipeline(config(max_batch_size=8), shared_memory=False)
    try:
        assert shared.shared and not socket.shared
        # The server and its worker each map the buffer once; the socket pipeline has none.
        assert mappings(shared.pid) == 1 and mappings(socket.pid) == 0
        for p in (shared, socket):
            p.warm_up()
        assert shared.min_rows == socket.min_rows
        pixels = [d[None, None].astype(np.uint8) for d in samples[0][:8]]
        floats = [to_model(u, shared.spec) for u in pixels]
        mixed = [u if i % 2 else f for i, (u, f) in enumerate(zip(pixels, floats, strict=True))]
        sent = dict(shared.sent)
        for batch in (floats[:1], floats[:3], floats, pixels[:3], pixels, mixed):
            for pad in (True, False):
                reference = socket.run(floats[: len(batch)], pad=pad)
                for p in (shared, socket):
                    got = p.run(batch, pad=pad)
                    assert len(got) == len(reference) and all(map(same_bits, got, reference))
        assert (
            shared.sent["shared"] - sent["shared"] == 12 and shared.sent["socket"] == sent["socket"]
        )
        assert socket.sent["shared"] == 0
    finally:
        shared.close()
        socket.close()


def png(pixels: np.ndarray) -> pb.CheckRequest:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return pb.CheckRequest(image=pb.EncodedImage(data=buf.getvalue()), return_features=True)


def test_a_real_server_answers_pixels_as_their_floats_alone_or_batched(samples) -> None:
    """A PNG, a UINT8 tensor and the FLOAT32 tensor of the values they map to, alone and in
    one CheckBatch (one batch of both kinds): the same features, bit for bit."""
    torch.set_num_threads(1)
    running, port = create_server(config(max_batch_size=8, max_delay_ms=50))
    try:
        assert running.plane.pipeline.shared
        digit = samples[0][0].astype(np.uint8)
        as_tensor = pb.CheckRequest(
            tensor=pb.Tensor(dtype=pb.UINT8, shape=[1, 28, 28], data=digit.tobytes()),
            return_features=True,
        )
        as_floats = tensor_request(
            to_model(digit[None, None], running.plane.spec), return_features=True
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ReliabilityStub(channel)
            alone = [stub.Check(r, timeout=WAIT) for r in (png(digit), as_tensor, as_floats)]
            batched = stub.CheckBatch(
                pb.CheckBatchRequest(requests=[png(digit), as_floats, as_tensor]), timeout=WAIT
            ).responses
        want = list(alone[2].features)
        assert len(want) > 0
        for reply in (*alone, *batched):
            assert list(reply.features) == want and reply.score == alone[2].score
    finally:
        running.stop(None).wait(WAIT)


def test_a_worker_killed_mid_batch_gets_a_fresh_buffer_and_nothing_is_left(samples) -> None:
    """Killed while its batch sits in the buffer: the call fails UNAVAILABLE, the next one
    is answered by a new worker through a new buffer, the old one is gone from the server
    process (no mapping, no descriptor), nothing was ever named in /dev/shm, and stopping
    the server leaves nothing either."""
    torch.set_num_threads(1)
    me = os.getpid()
    gc.collect()  # no buffer of an earlier test's pipeline goes away in the middle
    before = (mappings(me), descriptors(me), shm_names())
    running, port = create_server(config(max_delay_ms=0))
    pipeline = running.plane.pipeline
    assert isinstance(pipeline, ProcessPipeline) and pipeline.shared
    # This process holds the buffer once (one mapping; a descriptor of its own and mmap's).
    assert mappings(me) == before[0] + 1 and descriptors(me) == before[1] + 2
    request = tensor_request(samples[0][0].astype(np.float32) / 255.0, return_features=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ReliabilityStub(channel)
            first = stub.Check(request, timeout=WAIT)
            worker = pipeline.pid
            assert worker is not None and mappings(worker) == 1
            os.kill(worker, signal.SIGSTOP)
            call = stub.Check.future(request, timeout=WAIT)
            deadline = time.monotonic() + WAIT
            while len(pipeline._pending) != 1:
                assert time.monotonic() < deadline, "the batch never reached the worker"
                time.sleep(0.02)
            assert pipeline.sent["shared"] >= 2  # that batch too went through the buffer
            os.kill(worker, signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as info:
                call.result()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            again = stub.Check(request, timeout=WAIT)
            assert pipeline.restarts == 1 and pipeline.pid != worker and pipeline.shared
            assert list(again.features) == list(first.features)
            assert mappings(pipeline.pid) == 1
            # The dead worker's buffer is released: one buffer held, as at the start.
            assert mappings(me) == before[0] + 1 and descriptors(me) == before[1] + 2
            assert shm_names() == before[2]
    finally:
        running.stop(None).wait(WAIT)
    assert (mappings(me), descriptors(me), shm_names()) == before


def test_without_a_shared_buffer_batches_go_over_the_socket(samples, caplog) -> None:
    """When the buffer cannot be made (here: a file-size limit below its size, which the
    kernel applies to the shared memory file), one warning says so and every batch goes
    over the socket, with the same answers."""
    torch.set_num_threads(1)
    settings = config(max_batch_size=512)
    size = 2 * slot_size(512, (1, 28, 28), "float32")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        with pytest.raises(SharedBatchError, match="File too large"):  # what it meets
            SharedBatches(2, size // 2)
        fallback = ProcessPipeline(settings)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    reference = ProcessPipeline(settings, shared_memory=False)
    try:
        assert not fallback.shared and mappings(fallback.pid) == 0
        warnings = [r for r in caplog.records if "over its socket" in r.getMessage()]
        assert len(warnings) == 1 and "File too large" in warnings[0].getMessage()
        inputs = [d[None, None].astype(np.float32) / 255.0 for d in samples[0][:5]]
        got, want = fallback.run(inputs, pad=False), reference.run(inputs, pad=False)
        assert len(got) == len(want) and all(map(same_bits, got, want))
        assert fallback.sent == {"shared": 0, "socket": 1}
    finally:
        fallback.close()
        reference.close()
