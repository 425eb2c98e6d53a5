"""One request must not stall a real ``gradsentry serve`` or grow its memory.

Counts are checked before any input is decoded, an image's bytes and container parts are
bounded before Pillow parses it, and decoding runs off the event loop: a health check made
while such a request is being refused is answered. The speed bars themselves (refused in
<= 0.5 s, health in <= 1 s) are measured side by side in ``benchmarks/hardening.py``; the
timings asserted here are 10x looser, because this suite shares two cores with others.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from tests.servers import WAIT, ServerProcess, serve_process

TINY_PNGS = 209_702  # 15.3 MB of 1x1 PNGs in one CheckBatch: under the message limit
EMPTY_CHUNKS = 1_390_000  # 16.7 MB of empty ancillary chunks in one 28x28 PNG
LOOSE = 10.0  # 10x the bars of benchmarks/hardening.py (0.5 s to refuse, 1 s for health)
RSS_GROWTH = 100 * 1024 * 1024


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def padded_png(pixels: np.ndarray, chunks: int) -> bytes:
    """A valid PNG of ``pixels`` with ``chunks`` empty ancillary chunks after its header."""
    plain = png(pixels)
    return plain[:33] + chunk(b"zzZz") * chunks + plain[33:]  # 33: signature + IHDR


def image_request(data: bytes) -> pb.CheckRequest:
    return pb.CheckRequest(image=pb.EncodedImage(data=data))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve_process(tmp_path_factory.mktemp("amplification")) as started:
        yield started


def refused_while_healthy(server: ServerProcess, call) -> tuple[grpc.RpcError, float, float]:
    """Run ``call(stub)`` (it must fail) while another client checks health every 50 ms:
    (its error, seconds it took, slowest health answer)."""
    slowest = 0.0
    with (
        grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", -1)]) as ch,
        grpc.insecure_channel(server.target) as health_ch,
        ThreadPoolExecutor(1) as pool,
    ):
        health = health_pb2_grpc.HealthStub(health_ch)
        health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)  # connected
        start = time.perf_counter()
        future = pool.submit(call, pb_grpc.ReliabilityStub(ch))
        while not future.done():
            t0 = time.perf_counter()
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as info:
            future.result()
        return info.value, time.perf_counter() - start, slowest


def test_a_batch_of_209702_tiny_pngs_is_refused_before_any_is_decoded(server) -> None:
    tiny = png(np.zeros((1, 1), np.uint8))
    batch = pb.CheckBatchRequest(requests=[image_request(tiny)] * TINY_PNGS)
    rss = server.metric("process_resident_memory_bytes")
    error, took, slowest = refused_while_healthy(
        server, lambda stub: stub.CheckBatch(batch, timeout=WAIT)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{TINY_PNGS} inputs in one call" in error.details()
    assert took < LOOSE * 0.5 and slowest < LOOSE * 1.0
    assert server.metric("process_resident_memory_bytes") - rss <= RSS_GROWTH
    # Nothing was decoded: no decode stage was timed.
    assert server.metric("gradsentry_stage_duration_seconds_count", stage="decode") == 0


def test_a_png_with_a_million_empty_chunks_is_refused_unparsed(server) -> None:
    pixels = np.zeros((28, 28), np.uint8)
    bomb = padded_png(pixels, EMPTY_CHUNKS)
    rss = server.metric("process_resident_memory_bytes")
    error, took, slowest = refused_while_healthy(
        server, lambda stub: stub.Check(image_request(bomb), timeout=WAIT)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"image of {len(bomb)} bytes" in error.details()
    assert took < LOOSE * 0.5 and slowest < LOOSE * 1.0
    assert server.metric("process_resident_memory_bytes") - rss <= RSS_GROWTH


def test_chunk_padding_under_the_byte_limit_is_refused_too(server) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.ReliabilityStub(ch)
        pixels = np.zeros((28, 28), np.uint8)
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(image_request(padded_png(pixels, 5000)), timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "PNG chunks or JPEG segments" in info.value.details()
        # Ordinary images, PNG and progressive JPEG, with a few metadata chunks, still pass.
        rng = np.random.default_rng(0)
        digit = (rng.random((28, 28)) * 255).astype(np.uint8)
        jpeg = io.BytesIO()
        Image.fromarray(digit).save(jpeg, format="JPEG", progressive=True)
        for data in (png(digit), padded_png(digit, 8), jpeg.getvalue()):
            assert stub.Check(image_request(data), timeout=WAIT).predicted_class in range(10)


def test_undecodable_image_errors_name_no_python_object(server) -> None:
    with grpc.insecure_channel(server.target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ReliabilityStub(ch).Check(image_request(b"GIF89a not ours"), timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "object at 0x" not in info.value.details()
    assert info.value.details() == "undecodable image: not a PNG or JPEG file"


def test_a_call_over_its_decode_budget_is_refused(tmp_path: Path) -> None:
    digit = png((np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8))
    batch = pb.CheckBatchRequest(requests=[image_request(digit)] * 64)
    with (
        serve_process(tmp_path, decode_budget_seconds=1e-6) as server,
        grpc.insecure_channel(server.target) as ch,
    ):
        stub = pb_grpc.ReliabilityStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.CheckBatch(batch, timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "decode_budget_seconds" in info.value.details()
        # Tensors of that size are decoded on the event loop, outside the budget.
        x = np.zeros((1, 28, 28), "<f4")
        tensor = pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=x.tobytes())
        assert stub.Check(pb.CheckRequest(tensor=tensor), timeout=WAIT).predicted_class >= 0
