"""Frame decoding on arbitrary input (property-based): ``decode_pixels`` gives ``HxWx3 uint8`` pixels
within the limits, or an ``ImageError``; never another exception, whatever the bytes, encoding and
declared dimensions."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.errors import ImageError
from shared.limits import MAX_DIMENSION
from shared.messages.pixels import ENCODINGS, decode_pixels

MAX_PIXELS = 1 << 16  # small, so that the limit is reached by generated images too


def _image(fmt: str, mode: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format=fmt)
    return buffer.getvalue()


FORMATS = [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16"), ("PNG", "P"), ("JPEG", "CMYK"), ("JPEG", "L")]
FORMATS += [("BMP", "RGB"), ("TIFF", "F"), ("TIFF", "RGB"), ("PNG", "LA")]
SEEDS = [_image(fmt, mode, w, h) for fmt, mode in FORMATS for w, h in [(5, 3), (300, 300)]]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.none() | st.integers(0, len(data)))
    return bytes(data if cut is None else data[:cut])


dimension = st.none() | st.integers(-2, 2 * MAX_DIMENSION) | st.integers(1, 400)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_bytes(), st.sampled_from([*ENCODINGS, "gif", ""]), dimension, dimension)
def test_decode_pixels_gives_bounded_rgb_or_an_image_error(
    data: bytes, encoding: str, width: int | None, height: int | None
) -> None:
    try:
        pixels = decode_pixels(data, encoding, width, height, max_bytes=1 << 20, max_pixels=MAX_PIXELS)
    except ImageError as exc:
        assert exc.reason in {"empty", "corrupt", "too_large", "unsupported_format", "bad_dimensions"}
        return
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
    rows, columns, channels = pixels.shape
    assert channels == 3 and rows * columns <= MAX_PIXELS and max(rows, columns) <= MAX_DIMENSION
    if width is not None and height is not None:
        assert (columns, rows) == (width, height)
