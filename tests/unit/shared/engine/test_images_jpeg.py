"""JPEG frames are decoded by libjpeg-turbo's own API (``simplejpeg``), DCT-scaled by the same
powers of two as PIL's ``draft`` and to the same pixels; what it cannot or will not decode exactly
as PIL does (CMYK, recoverable warnings) is left to PIL, and still comes out the same."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from benchmarks.decode import pil_reduced  # what the engine decoded before: PIL alone
from shared.engine import images
from shared.engine.images import decode_image, decode_image_reduced
from shared.errors import ImageError


def _jpeg(pixels: np.ndarray, mode: str | None = None, quality: int = 90) -> bytes:
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    base = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width])


@pytest.fixture
def turbo_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (min_height, min_width) of every decode that went through libjpeg-turbo."""
    calls: list[tuple[int, int]] = []
    decode = simplejpeg.decode_jpeg

    def spy(data: bytes, *args: object, **kwargs: int) -> np.ndarray:
        calls.append((kwargs.get("min_height", 0), kwargs.get("min_width", 0)))
        return decode(data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", spy)
    return calls


@pytest.mark.parametrize(
    ("size", "min_side"),
    [
        ((1000, 800), 224),  # libjpeg-turbo alone would pick 3/8; PIL's draft takes 1/2
        ((700, 500), 224),
        ((460, 460), 224),
        ((900, 224), 224),
        ((600, 400), 16),  # 1/8, then a box reduction by 3 as for any large frame
        ((333, 251), None),  # full size
    ],
)
def test_scaled_decoding_matches_pil_pixel_for_pixel(
    size: tuple[int, int], min_side: int | None, turbo_calls: list
) -> None:
    width, height = size
    data = _jpeg(_noise(height, width))
    pixels, original = decode_image_reduced(data, min_side)
    assert original == (width, height) and len(turbo_calls) == 1
    np.testing.assert_array_equal(pixels, pil_reduced(data, min_side))


def test_grayscale_jpeg_becomes_three_equal_channels(turbo_calls: list) -> None:
    data = _jpeg(_noise(300, 260), "L")
    pixels = decode_image(data)
    assert pixels.shape == (300, 260, 3) and len(turbo_calls) == 1
    assert (pixels == pixels[:, :, :1]).all()
    np.testing.assert_array_equal(pixels, pil_reduced(data, None))


def test_cmyk_jpeg_is_left_to_pil(turbo_calls: list) -> None:
    data = _jpeg(_noise(64, 48), "CMYK")
    pixels, _ = decode_image_reduced(data, 16)
    assert turbo_calls == []
    np.testing.assert_array_equal(pixels, pil_reduced(data, 16))


def test_recoverable_warnings_are_decoded_as_pil_decodes_them() -> None:
    data = _jpeg(_noise(64, 64))
    tables = data.index(b"\xff\xdb")
    extraneous = data[:tables] + b"\x00\x00" + data[tables:]  # "2 extraneous bytes before marker"
    scan = data.index(b"\xff\xda")
    cut_short = data[: scan + (len(data) - scan) // 2] + b"\xff\xd9"  # "premature end of data segment"
    for warned in (extraneous, cut_short):
        with pytest.raises(ValueError):
            simplejpeg.decode_jpeg(warned)  # strict: libjpeg's warning is an error there
        np.testing.assert_array_equal(decode_image(warned), pil_reduced(warned, None))


def test_a_truncated_or_oversized_jpeg_is_refused() -> None:
    data = _jpeg(_noise(64, 64))
    with pytest.raises(ImageError) as excinfo:
        decode_image_reduced(data[: len(data) // 2], 16)
    assert excinfo.value.reason == "corrupt"
    with pytest.raises(ImageError) as excinfo:
        decode_image(_jpeg(_noise(64, 80)), max_pixels=64 * 79)
    assert excinfo.value.reason == "too_large"


def test_a_multi_picture_jpeg_decodes_as_its_first_picture(turbo_calls: list) -> None:
    """MPO (a JPEG with more pictures appended, as some cameras write): PIL named it MPO and the
    engine refused it; it is a JPEG whose first picture is the frame."""
    first = _noise(32, 48)
    buffer = io.BytesIO()
    Image.fromarray(first).save(
        buffer, "MPO", save_all=True, append_images=[Image.fromarray(_noise(32, 48, seed=1))]
    )
    pixels = decode_image(buffer.getvalue())
    assert len(turbo_calls) == 1
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        assert image.format == "MPO"
        np.testing.assert_array_equal(pixels, np.asarray(image.convert("RGB")))
