"""Property: every malformed request is INVALID_ARGUMENT naming its problem, and the server
shrugs it off.

Hypothesis sends well over 2,000 malformed inputs (in well-formed protobuf) to ONE real
server (the session's) over one channel: unknown or unset dtypes, wrong shapes, wrong byte
counts (including another dtype's bytes), NaN/Inf, out-of-range values, empty inputs,
oversized inputs (huge shapes, surplus data, large or decompression-bomb images),
undecodable images (random bytes, truncated PNG/JPEG, other formats, broken checksums) and
malformed request ids — through Check, CheckBatch (behind valid inputs, so the index must
be named) and CheckStream. Each case knows the words its answer must contain. Afterwards
the server must still be SERVING and give the same answers as before for valid inputs.

Messages larger than the transport limit (``max_message_bytes``) never reach the service:
gRPC itself answers RESOURCE_EXHAUSTED, as the gRPC spec prescribes; that is tested here too.
Bytes that are not protobuf at all: ``test_malformed_protobuf.py``.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from detectors.sentry import Sentry
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.server import SentryServer
from tests.servers import SCORE_ATOL

SHAPE = (1, 28, 28)
PIXELS = 28 * 28
VALID_SHAPES = ([1, 28, 28], [1, 1, 28, 28])
WIRE = {pb.FLOAT16: "<f2", pb.FLOAT32: "<f4", pb.FLOAT64: "<f8", pb.UINT8: "u1"}
FLOATS = (pb.FLOAT16, pb.FLOAT32, pb.FLOAT64)
# Shapes one typo away from a valid one, and degenerate ones.
NEAR_MISS_SHAPES = [
    [28, 28], [28, 28, 1], [1, 28, 28, 1], [2, 1, 28, 28], [3, 28, 28], [1, 28, 27],
    [1, 1, 1, 28, 28], [1, 0, 28], [1, -28, 28], [], [784], [1, 784],
]  # fmt: skip
EXAMPLES = 2100  # each example is one RPC
# Fixed: a failure in CI replays here (hypothesis prints this seed with a failing example).
SEED = 20261202
SEEDS = st.integers(0, 2**32 - 1)


@dataclass(frozen=True)
class Case:
    """One malformed input: the answer's message must contain one of ``expect``.

    ``request`` None stands for an empty CheckBatchRequest; ``metadata`` is sent with the
    call (a malformed x-request-id).
    """

    what: str
    request: pb.CheckRequest | None
    expect: tuple[str, ...]
    metadata: tuple[tuple[str, str], ...] = ()


def _tensor(dtype: int, shape: list[int], data: bytes) -> pb.CheckRequest:
    return pb.CheckRequest(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data))


def _valid_array(seed: int, dtype: int) -> np.ndarray:
    """A valid input [1, 28, 28] of ``dtype``'s wire type, random values in range."""
    rng = np.random.default_rng(seed)
    if dtype == pb.UINT8:
        return rng.integers(0, 256, SHAPE, dtype=np.uint8)
    return rng.random(SHAPE).astype(WIRE[dtype])


def _encoded(seed: int, fmt: str, size: tuple[int, int] = (28, 28)) -> bytes:
    """A real PNG/JPEG/GIF/... of random grey pixels (width, height)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), mode="L").save(
        buf, format=fmt
    )
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height grey pixels (a decompression bomb when
    large: the declared size is what a decoder would allocate)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _image(data: bytes) -> pb.CheckRequest:
    return pb.CheckRequest(image=pb.EncodedImage(data=data))


# --- one strategy per kind of mistake ----------------------------------------------------


@st.composite
def unknown_dtypes(draw: st.DrawFn) -> Case:
    value = draw(st.one_of(st.just(0), st.integers(5, 2**31 - 1), st.integers(-(2**31), -1)))
    data = _valid_array(draw(SEEDS), pb.FLOAT32).tobytes()
    request = _tensor(value, draw(st.sampled_from(VALID_SHAPES)), data)
    if value == 0:
        return Case("unset dtype", request, ("tensor dtype is DTYPE_UNSPECIFIED",))
    return Case("unknown dtype enum", request, (f"unknown tensor dtype {value} (unknown)",))


@st.composite
def wrong_shapes(draw: st.DrawFn) -> Case:
    near_misses = st.sampled_from(NEAR_MISS_SHAPES)
    anything = st.lists(st.integers(-(2**62), 2**62), max_size=6)
    shape = draw(st.one_of(near_misses, anything).filter(lambda s: s not in VALID_SHAPES))
    dtype = draw(st.sampled_from(list(WIRE)))
    size = draw(st.integers(0, 4 * PIXELS * 8))
    request = _tensor(dtype, shape, bytes(size))
    return Case("wrong shape", request, (f"wrong tensor shape {shape}",))


def _byte_count_message(data: bytes, shape: list[int], dtype: int) -> str:
    need = PIXELS * np.dtype(WIRE[dtype]).itemsize
    return f"tensor data has {len(data)} bytes but shape {shape} of {pb.DType.Name(dtype)} " + (
        f"needs {need}"
    )


@st.composite
def wrong_byte_counts(draw: st.DrawFn) -> Case:
    dtype = draw(st.sampled_from(list(WIRE)))
    shape = draw(st.sampled_from(VALID_SHAPES))
    need = PIXELS * np.dtype(WIRE[dtype]).itemsize
    size = draw(st.integers(1, 3 * need).filter(lambda n: n != need))
    data = np.random.default_rng(draw(SEEDS)).integers(0, 256, size, dtype=np.uint8).tobytes()
    return Case(
        "byte count", _tensor(dtype, shape, data), (_byte_count_message(data, shape, dtype),)
    )


@st.composite
def other_dtype_bytes(draw: st.DrawFn) -> Case:
    """Data encoded as one dtype but declared as another (every itemsize differs)."""
    actual, declared = draw(st.permutations(list(WIRE)))[:2]
    shape = draw(st.sampled_from(VALID_SHAPES))
    data = _valid_array(draw(SEEDS), actual).tobytes()
    message = _byte_count_message(data, shape, declared)
    return Case("wrong dtype", _tensor(declared, shape, data), (message,))


@st.composite
def non_finite(draw: st.DrawFn) -> Case:
    dtype = draw(st.sampled_from(FLOATS))
    n_nan = draw(st.integers(0, 20))
    n_inf = draw(st.integers(0 if n_nan else 1, 20))
    rng = np.random.default_rng(draw(SEEDS))
    x = _valid_array(int(rng.integers(2**32)), dtype).reshape(-1)
    where = rng.choice(PIXELS, n_nan + n_inf, replace=False)
    x[where[:n_nan]] = np.nan
    x[where[n_nan:]] = rng.choice([np.inf, -np.inf], n_inf)
    request = _tensor(dtype, draw(st.sampled_from(VALID_SHAPES)), x.tobytes())
    return Case("NaN/Inf", request, (f"non-finite values: {n_nan} NaN and {n_inf} Inf",))


@st.composite
def out_of_range(draw: st.DrawFn) -> Case:
    dtype = draw(st.sampled_from(FLOATS))
    rng = np.random.default_rng(draw(SEEDS))
    x = _valid_array(int(rng.integers(2**32)), dtype).reshape(-1)
    count = draw(st.integers(1, 10))
    bad = np.concatenate([rng.uniform(-6e4, -0.01, count), rng.uniform(1.01, 6e4, count)])
    x[rng.choice(PIXELS, count, replace=False)] = rng.choice(bad, count)
    as_model = x.astype(np.float32)  # what the server compares, in the model's dtype
    found = f"found [{float(as_model.min())!r}, {float(as_model.max())!r}]"
    request = _tensor(dtype, draw(st.sampled_from(VALID_SHAPES)), x.tobytes())
    return Case("out of range", request, (f"values out of range: {found}",))


@st.composite
def empties(draw: st.DrawFn) -> Case:
    shape = draw(st.sampled_from(VALID_SHAPES))
    dtype = draw(st.sampled_from(list(WIRE)))
    return draw(
        st.sampled_from(
            [
                Case("empty request", pb.CheckRequest(), ("empty request",)),
                Case("empty tensor", _tensor(dtype, shape, b""), ("empty tensor data",)),
                Case("empty tensor", pb.CheckRequest(tensor=pb.Tensor()), ("DTYPE_UNSPECIFIED",)),
                Case("empty image", _image(b""), ("empty image data",)),
                Case("empty batch", None, ("empty batch",)),
            ]
        )
    )


@st.composite
def oversized(draw: st.DrawFn) -> Case:
    """Too big for the model, but within the transport's message limit."""
    choice = draw(st.integers(0, 3))
    if choice == 0:  # a big tensor with all its data
        shape = [
            draw(st.sampled_from([1, 3])),
            *draw(st.lists(st.integers(29, 512), min_size=2, max_size=2)),
        ]
        data = bytes(int(np.prod(shape)) * 4)
        return Case("oversized tensor", _tensor(pb.FLOAT32, shape, data), ("wrong tensor shape",))
    if choice == 1:  # far more data than the shape needs
        shape = draw(st.sampled_from(VALID_SHAPES))
        data = bytes(PIXELS * 4 * draw(st.integers(2, 1000)))
        message = _byte_count_message(data, shape, pb.FLOAT32)
        return Case("oversized data", _tensor(pb.FLOAT32, shape, data), (message,))
    if choice == 2:  # a real, larger image
        width, height = draw(st.tuples(st.integers(1, 1024), st.integers(1, 1024)))
        if (width, height) == (28, 28):
            width += 1
        fmt = draw(st.sampled_from(["PNG", "JPEG"]))
        buf = io.BytesIO()
        Image.new("L", (width, height), color=draw(st.integers(0, 255))).save(buf, format=fmt)
        message = f"wrong image size {width}x{height} (width x height)"
        too_many_bytes = "bytes per 28x28 image"  # a large image may be refused unparsed
        return Case("oversized image", _image(buf.getvalue()), (message, too_many_bytes))
    width, height = draw(st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1)))
    if (width, height) == (28, 28):
        height += 1
    expect = ("image is too large", f"image of {width}x{height} pixels is too large")
    return Case(
        "decompression bomb",
        _image(_png_claiming(width, height)),
        (*expect, f"wrong image size {width}x{height}"),
    )


@st.composite
def undecodable(draw: st.DrawFn) -> Case:
    choice = draw(st.integers(0, 4))
    if choice == 0:  # random bytes, possibly behind a PNG or JPEG signature
        prefix = draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"]))
        data = prefix + draw(st.binary(min_size=1, max_size=600))
        # Random bytes behind a JPEG signature can spell a header with some size; naming
        # that size is naming the problem too.
        expect = ("undecodable image", "wrong image size", "too large", "PNG chunks or JPEG")
        return Case("random bytes", _image(data), expect)
    if choice == 1:  # a real PNG cut inside its pixel data or earlier
        png = _encoded(draw(SEEDS), "PNG")
        cut = draw(st.integers(1, len(png) - 24))
        return Case("truncated PNG", _image(png[:cut]), ("undecodable image",))
    if choice == 2:  # a real JPEG cut before its last scan bytes
        jpeg = _encoded(draw(SEEDS), "JPEG")
        cut = draw(st.integers(1, len(jpeg) - 8))
        return Case("truncated JPEG", _image(jpeg[:cut]), ("undecodable image",))
    if choice == 3:  # a valid image in a format the API does not take
        fmt = draw(st.sampled_from(["GIF", "BMP", "TIFF", "PPM", "ICO"]))
        return Case("other format", _image(_encoded(draw(SEEDS), fmt)), ("undecodable image",))
    png = bytearray(_encoded(draw(SEEDS), "PNG"))  # IHDR checksum broken
    png[29 + draw(st.integers(0, 3))] ^= 1 << draw(st.integers(0, 7))
    return Case("broken checksum", _image(bytes(png)), ("undecodable image",))


@st.composite
def bad_request_ids(draw: st.DrawFn) -> Case:
    word = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
    value = draw(
        st.one_of(
            st.builds(lambda a, b: f"{a} {b}", word, word),  # a space inside
            st.text(
                st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=129, max_size=300
            ),
        )
    )
    request = _tensor(pb.FLOAT32, [1, 28, 28], _valid_array(draw(SEEDS), pb.FLOAT32).tobytes())
    return Case("bad x-request-id", request, ("x-request-id must be",), (("x-request-id", value),))


MALFORMED = st.one_of(
    unknown_dtypes(),
    wrong_shapes(),
    wrong_byte_counts(),
    other_dtype_bytes(),
    non_finite(),
    out_of_range(),
    empties(),
    oversized(),
    undecodable(),
    bad_request_ids(),
)
METHODS = st.sampled_from(["Check", "CheckBatch", "CheckStream"])


def _good(seed: int) -> pb.CheckRequest:
    return _tensor(pb.FLOAT32, [1, 28, 28], _valid_array(seed, pb.FLOAT32).tobytes())


def send(
    stub: pb_grpc.ReliabilityStub, case: Case, method: str, before: int
) -> tuple[str, grpc.StatusCode, str]:
    """Send ``case`` by ``method`` (CheckBatch: behind ``before`` valid inputs); returns the
    index prefix the message must carry, the status code and the message."""
    prefix = ""
    try:
        if case.request is None or method == "CheckBatch":
            requests = [] if case.request is None else [_good(i) for i in range(before)]
            if case.request is not None:
                requests.append(case.request)
                prefix = f"requests {before}: "
            stub.CheckBatch(
                pb.CheckBatchRequest(requests=requests), metadata=case.metadata, timeout=60
            )
        elif method == "CheckStream":
            prefix = "stream message 0: "
            list(stub.CheckStream(iter([case.request]), metadata=case.metadata, timeout=60))
        else:
            stub.Check(case.request, metadata=case.metadata, timeout=60)
    except grpc.RpcError as exc:
        if case.metadata:  # the call is refused before any input is looked at
            prefix = ""
        return prefix, exc.code(), exc.details() or ""
    return prefix, grpc.StatusCode.OK, "answered as if valid"


def test_messages_beyond_the_transport_limit_get_resource_exhausted(
    server: tuple[SentryServer, int], stub: pb_grpc.ReliabilityStub
) -> None:
    limit = 16 * 1024 * 1024  # the default max_message_bytes the session server runs with
    request = _tensor(pb.FLOAT32, [1, 28, 28], bytes(limit + 1))
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()


# The decoder warns about the decompression bombs this test sends on purpose.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_malformed_requests_are_invalid_argument_and_harmless(
    channel: grpc.Channel, stub: pb_grpc.ReliabilityStub, samples, sentry: Sentry
) -> None:
    digits = samples[0][:4]  # uint8 [4, 28, 28]
    x = (digits.astype(np.float32) / 255.0)[:, None]
    valid = [_tensor(pb.FLOAT32, [1, 28, 28], x[i].tobytes()) for i in range(4)]
    valid.append(
        pb.CheckRequest(
            tensor=pb.Tensor(dtype=pb.UINT8, shape=[1, 28, 28], data=digits[0].tobytes())
        )
    )
    before = [stub.Check(r, timeout=60) for r in valid]
    reference = sentry.check(torch.from_numpy(x))
    for i, response in enumerate(before[:4]):
        assert response.score == pytest.approx(float(reference.score[i]), abs=SCORE_ATOL)
    sent: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @seed(SEED)
    @given(case=MALFORMED, method=METHODS, before_count=st.integers(0, 3))
    def each_is_refused(case: Case, method: str, before_count: int) -> None:
        prefix, code, details = send(stub, case, method, before_count)
        sent[case.what] += 1
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (case.what, method, code, details)
        assert details.startswith(prefix), (case.what, method, prefix, details)
        assert any(e in details for e in case.expect), (case.what, case.expect, details)

    each_is_refused()
    assert sum(sent.values()) >= 2000, sent
    # Every kind of mistake was exercised many times, not just the cheapest ones.
    kinds = {
        "unknown dtype enum", "wrong shape", "byte count", "wrong dtype", "NaN/Inf",
        "out of range", "oversized tensor", "oversized data", "oversized image",
        "decompression bomb", "random bytes", "truncated PNG", "truncated JPEG",
        "other format", "broken checksum", "bad x-request-id",
    }  # fmt: skip
    assert kinds <= set(sent), kinds - set(sent)
    assert all(sent[k] >= 10 for k in kinds), sent

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "gradsentry.v1.Reliability"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    after = [stub.Check(r, timeout=60) for r in valid]
    for a, b in zip(after, before, strict=True):
        assert (a.predicted_class, a.verdict, a.kind) == (b.predicted_class, b.verdict, b.kind)
        assert a.score == pytest.approx(b.score, abs=1e-6)
        assert dict(a.kind_scores) == pytest.approx(dict(b.kind_scores), abs=1e-6)
