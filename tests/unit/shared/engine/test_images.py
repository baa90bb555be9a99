from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shared.engine.images import LazyImages, decode_image, load_image_file, raw_to_rgb, validate_rgb
from shared.errors import ImageError
from shared.limits import MAX_DIMENSION, MAX_PIXELS
from tests.support.images import encode_image


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip(fmt: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    decoded = decode_image(encode_image(pixels, fmt))
    assert decoded.dtype == np.uint8 and decoded.shape == (17, 23, 3)
    np.testing.assert_array_equal(decoded, pixels)


def test_jpeg_decodes_to_rgb() -> None:
    pixels = np.full((40, 30, 3), 120, dtype=np.uint8)
    decoded = decode_image(encode_image(pixels, "JPEG"))
    assert decoded.shape == (40, 30, 3)
    assert abs(int(decoded.mean()) - 120) <= 2


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    decoded = decode_image(encode_image(gray, "PNG"))
    assert decoded.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], gray)


def test_rgba_is_composited_onto_black() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128  # half transparent red
    decoded = decode_image(encode_image(rgba, "PNG"))
    assert decoded.shape == (4, 4, 3)
    assert abs(int(decoded[0, 0, 0]) - 100) <= 1 and decoded[0, 0, 1] == 0


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    samples = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    data = encode_image(samples, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data)
    assert decoded.shape == (1, 3, 3)
    assert list(decoded[0, :, 0]) == [0, 128, 255]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image", "corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
    ],
)
def test_bad_bytes_have_clear_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as excinfo:
        decode_image(data)
    assert excinfo.value.reason == reason


def test_truncated_jpeg_is_corrupt() -> None:
    data = encode_image(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    with pytest.raises(ImageError) as excinfo:
        decode_image(data[: len(data) // 2])
    assert excinfo.value.reason == "corrupt"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (valid CRC) but carries almost no pixels."""
    data = bytearray(encode_image(np.zeros((2, 2, 3), dtype=np.uint8), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_huge_dimensions_are_refused_from_the_header() -> None:
    with pytest.raises(ImageError) as excinfo:
        decode_image(png_claiming(100_000, 100_000))
    assert excinfo.value.reason == "too_large"
    with pytest.raises(ImageError) as excinfo:
        decode_image(png_claiming(5000, 5000))  # 25 Mpx: over the 16 Mpx default
    assert excinfo.value.reason == "too_large"


def test_zero_dimension_header_is_refused() -> None:
    with pytest.raises(ImageError) as excinfo:
        decode_image(png_claiming(0, 10))
    assert excinfo.value.reason in {"bad_dimensions", "corrupt"}


def test_byte_limit_and_unsupported_format() -> None:
    data = encode_image(np.zeros((8, 8, 3), dtype=np.uint8), "PNG")
    with pytest.raises(ImageError) as excinfo:
        decode_image(data, max_bytes=10)
    assert excinfo.value.reason == "too_large"
    with pytest.raises(ImageError) as excinfo:
        decode_image(encode_image(np.zeros((8, 8, 3), dtype=np.uint8), "GIF"))
    assert excinfo.value.reason == "unsupported_format"


def test_raw_frames() -> None:
    gray = bytes(range(12))
    rgb = raw_to_rgb(gray, 4, 3, 1)
    assert rgb.shape == (3, 4, 3) and rgb[2, 3, 1] == 11
    rgba = raw_to_rgb(bytes([10, 20, 30, 255] * 4), 2, 2, 4)
    assert rgba.shape == (2, 2, 3) and list(rgba[0, 0]) == [10, 20, 30]
    for args, reason in [
        ((gray, 5, 3, 1), "bad_dimensions"),
        ((gray, 0, 3, 1), "bad_dimensions"),
        ((gray, 4, 3, 2), "bad_dimensions"),
        ((b"", 4, 3, 1), "empty"),
    ]:
        with pytest.raises(ImageError) as excinfo:
            raw_to_rgb(*args)
        assert excinfo.value.reason == reason
    with pytest.raises(ImageError) as excinfo:
        raw_to_rgb(bytes(100 * 100), 100, 100, 1, max_pixels=1000)
    assert excinfo.value.reason == "too_large"


def test_validate_rgb_and_file_loading(tmp_path) -> None:
    with pytest.raises(ImageError):
        validate_rgb(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ImageError):
        validate_rgb(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ImageError):
        validate_rgb(np.zeros((0, 4, 3), dtype=np.uint8))
    path = tmp_path / "x.png"
    path.write_bytes(encode_image(np.full((5, 6, 3), 7, dtype=np.uint8), "PNG"))
    assert load_image_file(path).shape == (5, 6, 3)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as excinfo:
        load_image_file(empty)
    assert excinfo.value.reason == "empty"


def test_a_side_longer_than_the_limit_is_refused_even_within_the_pixel_budget() -> None:
    long_side = MAX_DIMENSION + 1  # one row of it is far below MAX_PIXELS
    assert long_side < MAX_PIXELS
    with pytest.raises(ImageError) as excinfo:
        decode_image(png_claiming(long_side, 1))
    assert excinfo.value.reason == "too_large"
    with pytest.raises(ImageError) as excinfo:
        raw_to_rgb(bytes(long_side), 1, long_side, 1)
    assert excinfo.value.reason == "too_large"
    with pytest.raises(ImageError) as excinfo:
        validate_rgb(np.zeros((1, long_side, 3), dtype=np.uint8))
    assert excinfo.value.reason == "too_large"
    assert raw_to_rgb(bytes(MAX_DIMENSION), MAX_DIMENSION, 1, 1).shape == (1, MAX_DIMENSION, 3)


def test_lazy_images_read_each_source_when_asked(tmp_path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(encode_image(np.full((5, 6, 3), 7, dtype=np.uint8), "PNG"))
    array = np.zeros((3, 4, 3), dtype=np.uint8)
    images = LazyImages([path, array, np.zeros((3, 4), dtype=np.uint8)])
    assert len(images) == 3 and len(images[:2]) == 2
    assert images[0].shape == (5, 6, 3) and images[1] is array
    path.unlink()  # read on access, not when listed
    with pytest.raises(FileNotFoundError):
        images[0]
    with pytest.raises(ImageError):
        list(images[1:])
