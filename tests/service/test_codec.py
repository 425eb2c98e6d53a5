"""Decoding (service.dataplane.codec, the gradsentry.v1 codec) against specs other than the
demo's (RGB, other ranges, normalisation)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service.dataplane.codec import CodecError
from service.spec import InputSpec, SpecError
from service.transport.grpc_v1.codec import decode

RGB = InputSpec(shape=(3, 4, 5), value_range=(-1.0, 1.0), mean=(0.0, 0.5, -0.5), std=(1, 2, 4))


def encode(image: Image.Image, fmt: str) -> pb.CheckRequest:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return pb.CheckRequest(image=pb.EncodedImage(data=buf.getvalue()))


def test_float_tensors_of_every_wire_dtype_normalised_per_channel() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3, 4, 5))
    expected = (x - np.array([0.0, 0.5, -0.5])[:, None, None]) / np.array([1, 2, 4])[:, None, None]
    for dtype, np_dtype, tol in (
        (pb.FLOAT32, "<f4", 1e-6),
        (pb.FLOAT64, "<f8", 1e-6),
        (pb.FLOAT16, "<f2", 1e-3),
    ):
        req = pb.CheckRequest(
            tensor=pb.Tensor(dtype=dtype, shape=[3, 4, 5], data=x.astype(np_dtype).tobytes())
        )
        out = decode(req, RGB)
        assert out.shape == (1, 3, 4, 5) and out.dtype == np.float32
        np.testing.assert_allclose(out[0], expected, atol=tol)


def test_images_convert_to_the_specs_channels_and_range() -> None:
    gray = InputSpec(shape=(1, 4, 5))
    pixels = np.arange(60, dtype=np.uint8).reshape(4, 5, 3) * 4
    rgb_image = Image.fromarray(pixels, mode="RGB")
    as_gray = decode(encode(rgb_image, "PNG"), gray)
    np.testing.assert_allclose(as_gray[0, 0], np.asarray(rgb_image.convert("L")) / 255, atol=1e-6)
    plain = InputSpec(shape=(3, 4, 5), value_range=(-1.0, 1.0))
    as_rgb = decode(encode(rgb_image, "PNG"), plain)
    np.testing.assert_allclose(as_rgb[0], pixels.transpose(2, 0, 1) / 255 * 2 - 1, atol=1e-6)
    jpeg = decode(encode(Image.fromarray(pixels[..., 0], mode="L"), "JPEG"), plain)
    assert jpeg.shape == (1, 3, 4, 5) and np.allclose(jpeg[0, 0], jpeg[0, 1])


def test_refusals_name_the_problem() -> None:
    with pytest.raises(CodecError, match="4-channel inputs"):
        decode(encode(Image.new("L", (5, 4)), "PNG"), InputSpec(shape=(4, 4, 5)))
    gif = io.BytesIO()
    Image.new("L", (5, 4)).save(gif, format="GIF")
    with pytest.raises(CodecError, match="undecodable image"):
        decode(pb.CheckRequest(image=pb.EncodedImage(data=gif.getvalue())), RGB)
    low = np.full((3, 4, 5), -2.0, np.float32)
    with pytest.raises(CodecError, match=r"found \[-2.0, -2.0\]"):
        decode(
            pb.CheckRequest(
                tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[3, 4, 5], data=low.tobytes())
            ),
            RGB,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (1, 28)}, "shape"),
        ({"shape": (0, 28, 28)}, "shape"),
        ({"dtype": "uint8"}, "dtype"),
        ({"value_range": (1.0, 0.0)}, "value_range"),
        ({"mean": (0.5,)}, "both"),
        ({"mean": (0.5, 0.5), "std": (1.0, 1.0)}, "one value per channel"),
        ({"mean": (0.5,), "std": (0.0,)}, "std"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        InputSpec(**kwargs)


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-0.5, 2.7)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uint8_scaling_by_table_equals_the_float64_formula(value_range, dtype) -> None:
    from service.dataplane.codec import _from_uint8

    spec = InputSpec(shape=(1, 16, 16), dtype=dtype, value_range=value_range)
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    lo, hi = value_range
    want = (x.astype(np.float64) / 255.0 * (hi - lo) + lo).astype(dtype)
    got = _from_uint8(x, spec)
    assert got.dtype == np.dtype(dtype) and got.shape == x.shape
    np.testing.assert_array_equal(got, want)  # bit for bit: one rounding either way
