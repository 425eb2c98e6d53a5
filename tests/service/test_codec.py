"""Decoding (service.dataplane.codec, the gradsentry.v1 codec) against specs other than the
demo's (RGB, other ranges, normalisation)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service.dataplane.codec import CodecError, _from_uint8, check_values, normalise, to_model
from service.engine.pipeline import DevicePixels
from service.spec import InputSpec, SpecError
from service.transport.grpc_v1.codec import decode

RGB = InputSpec(shape=(3, 4, 5), value_range=(-1.0, 1.0), mean=(0.0, 0.5, -0.5), std=(1, 2, 4))


def encode(image: Image.Image, fmt: str) -> pb.CheckRequest:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return pb.CheckRequest(image=pb.EncodedImage(data=buf.getvalue()))


def model_input(request: pb.CheckRequest, spec: InputSpec) -> np.ndarray:
    """What the model is given for ``request``: decoded, then pixels mapped."""
    return to_model(decode(request, spec), spec)


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
    as_gray = model_input(encode(rgb_image, "PNG"), gray)
    np.testing.assert_allclose(as_gray[0, 0], np.asarray(rgb_image.convert("L")) / 255, atol=1e-6)
    plain = InputSpec(shape=(3, 4, 5), value_range=(-1.0, 1.0))
    as_rgb = model_input(encode(rgb_image, "PNG"), plain)
    np.testing.assert_allclose(as_rgb[0], pixels.transpose(2, 0, 1) / 255 * 2 - 1, atol=1e-6)
    jpeg = model_input(encode(Image.fromarray(pixels[..., 0], mode="L"), "JPEG"), plain)
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
        ({"value_range": (0.0, 1e39)}, "overflows float32"),
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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pixels_stay_uint8_and_map_to_the_bits_of_the_float_path(dtype: str) -> None:
    """Images and UINT8 tensors are decoded to uint8; mapped here (``to_model``) or on the
    model's device (``DevicePixels``, torch) they are bit for bit what the linear map and
    the normalisation make of them as floats."""
    spec = InputSpec(
        shape=(3, 4, 5), dtype=dtype, value_range=(-0.5, 2.5), mean=(0.1, 0.5, -0.5), std=(1, 3, 7)
    )
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    pixels.flat[:2] = (0, 255)
    tensor = pb.CheckRequest(
        tensor=pb.Tensor(dtype=pb.UINT8, shape=[3, 4, 5], data=pixels.tobytes())
    )
    image = encode(Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB"), "PNG")
    floats = normalise(check_values(_from_uint8(pixels[None], spec), spec), spec)
    for request in (tensor, image):
        got = decode(request, spec)
        assert got.dtype == np.uint8 and got.shape == (1, 3, 4, 5)
        np.testing.assert_array_equal(got[0], pixels)
        here = to_model(got, spec)
        there = DevicePixels(spec)(torch.from_numpy(np.array(got))).numpy()
        gathered = DevicePixels(spec).gather(torch.from_numpy(np.array(got))).numpy()  # a GPU's
        for x in (here, there, gathered):
            assert x.dtype == np.dtype(dtype)
            assert x.tobytes() == floats.tobytes()


@pytest.mark.parametrize("kind", ["tensor", "image"])
def test_the_ends_of_the_range_are_taken_as_the_model_stores_them(kind: str) -> None:
    """In float32 the range [0, 0.1] ends at 0.1000000015: a white pixel and a client's
    float32 0.1 land there and are accepted; the next float32 up is refused. Where float64
    rounding of the pixel map lands past a float32 rounding tie (this range's top is
    one), level 255 maps past the range's stored end and is refused with the message the
    float path gives."""

    def request(pixels: np.ndarray) -> pb.CheckRequest:
        if kind == "image":
            return encode(Image.fromarray(pixels[0], mode="L"), "PNG")
        return pb.CheckRequest(
            tensor=pb.Tensor(dtype=pb.UINT8, shape=[1, 4, 5], data=pixels.tobytes())
        )

    spec = InputSpec(shape=(1, 4, 5), value_range=(0.0, 0.1))
    white = np.full((1, 4, 5), 255, np.uint8)
    assert to_model(decode(request(white), spec), spec).max() == np.float32(0.1)
    top = np.full((1, 1, 4, 5), 0.1, np.float32)
    assert check_values(top, spec) is top
    top[0, 0, 1, 2] = np.nextafter(np.float32(0.1), np.float32(1))
    with pytest.raises(CodecError, match=r"values out of range: .* takes \[0\.0, 0\.1\]"):
        check_values(top, spec)

    tie = InputSpec(shape=(1, 4, 5), value_range=(-2.5947104849327665, 2.303721070289612))
    pixels = np.full((1, 4, 5), 254, np.uint8)
    assert decode(request(pixels), tie).dtype == np.uint8
    pixels[0, 1, 2] = 255
    with pytest.raises(CodecError) as info:
        decode(request(pixels), tie)
    with pytest.raises(CodecError) as floats:
        check_values(_from_uint8(pixels[None], tie), tie)
    assert str(info.value) == str(floats.value) and "out of range" in str(info.value)


def test_non_finite_values_are_counted() -> None:
    x = np.zeros((3, 4, 5), np.float32)
    x.flat[:3] = (np.nan, np.inf, -np.inf)
    req = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[3, 4, 5], data=x.tobytes()))
    with pytest.raises(CodecError, match="1 NaN and 2 Inf"):
        decode(req, RGB)
