"""Decoded-pixel memory is bounded before decoding, whatever the image's mode (issue 9, finding 1).

PIL holds a decoded image in at most 4 bytes per pixel (its own buffer, outside Python's allocator);
everything the decoder allocates on top of that must stay near the 3 bytes per pixel of the RGB
result, whatever the mode: alpha, 16-bit, palette with transparency, CMYK, float. Measured with
tracemalloc, which sees numpy's and Python's allocations.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from shared.engine.images import decode_image
from shared.errors import ImageError

WIDTH, HEIGHT = 1024, 1024
RNG = np.random.default_rng(0)


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _palette_with_transparency() -> bytes:
    image = Image.fromarray(RNG.integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8)).convert("P")
    return _save(image, "PNG", transparency=0, compress_level=1)


IMAGES: dict[str, Callable[[], bytes]] = {
    "rgb": lambda: _save(Image.fromarray(RNG.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)), "PNG"),
    "rgba": lambda: _save(Image.fromarray(RNG.integers(0, 255, (HEIGHT, WIDTH, 4), dtype=np.uint8)), "PNG"),
    "la": lambda: _save(
        Image.fromarray(RNG.integers(0, 255, (HEIGHT, WIDTH, 2), dtype=np.uint8), "LA"), "PNG"
    ),
    "16-bit": lambda: _save(Image.fromarray(RNG.integers(0, 65535, (HEIGHT, WIDTH), dtype=np.uint16)), "PNG"),
    "palette+transparency": _palette_with_transparency,
    "cmyk-jpeg": lambda: _save(
        Image.fromarray(RNG.integers(0, 255, (HEIGHT, WIDTH, 4), dtype=np.uint8), "CMYK"), "JPEG"
    ),
    "float-tiff": lambda: _save(Image.fromarray(RNG.random((HEIGHT, WIDTH), dtype=np.float32)), "TIFF"),
    "int32-tiff": lambda: _save(
        Image.fromarray(RNG.integers(-(1 << 20), 1 << 20, (HEIGHT, WIDTH), dtype=np.int32)), "TIFF"
    ),
}


@pytest.mark.parametrize("kind", list(IMAGES))
def test_decoding_allocates_little_more_than_the_rgb_result(kind: str) -> None:
    data = IMAGES[kind]()
    tracemalloc.start()
    try:
        pixels = decode_image(data, max_bytes=64 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels.shape == (HEIGHT, WIDTH, 3) and pixels.dtype == np.uint8
    # The result (3 B/px) plus bounded working rows; before the fix, 6 to 44 B/px.
    assert peak <= 3 * WIDTH * HEIGHT + (3 << 19), f"{kind}: {peak / (WIDTH * HEIGHT):.1f} B/px"


def test_every_mode_decodes_to_the_same_values_as_a_plain_conversion() -> None:
    """Row by row conversion gives what whole-image conversion gives (exact rounding)."""
    rgba = np.array([[[200, 100, 7, 128], [255, 255, 255, 255], [9, 9, 9, 0], [1, 2, 3, 1]]], np.uint8)
    got = decode_image(_save(Image.fromarray(rgba), "PNG"))
    alpha = rgba[..., 3:4].astype(np.float64) / 255
    np.testing.assert_array_equal(got, np.floor(rgba[..., :3] * alpha + 0.5).astype(np.uint8))
    samples = np.array([[0, 128, 129, 385, 257 * 128, 65535, 65407, 65408]], np.uint16)
    got = decode_image(_save(Image.fromarray(samples), "PNG"))[..., 0]
    np.testing.assert_array_equal(got, np.floor(samples / 257 + 0.5).astype(np.uint8))
    floats = np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)
    got = decode_image(_save(Image.fromarray(floats), "TIFF"))[..., 0]
    np.testing.assert_array_equal(got, [[0, 128, 255, 0]])


def test_all_alpha_values_composite_exactly() -> None:
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([colour, colour, colour, alpha], axis=-1).astype(np.uint8)
    got = decode_image(_save(Image.fromarray(rgba), "PNG"))[..., 0].astype(np.int64)
    np.testing.assert_array_equal(got, (colour * alpha * 2 + 255) // 510)


def test_a_mode_without_a_known_pixel_size_is_refused_before_decoding() -> None:
    data = _save(Image.new("I;16B", (4, 4)), "TIFF")
    try:
        pixels = decode_image(data)
    except ImageError as exc:
        assert exc.reason == "unsupported_format"
    else:
        assert pixels.shape == (4, 4, 3)
