"""Large frames decoded only as far as the model needs: the same picture at the model's input,
the frame's own size kept, every check of the full decoder still made."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageError
from shared.messages.pixels import decode_frame, decode_pixels

MODEL = 224
WIDTH, HEIGHT = 1600, 1200


def _frame() -> np.ndarray:
    """A smooth scene with texture and a small dark defect, like a camera frame."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    scene = 120 + 50 * np.sin(x / 90.0) * np.cos(y / 70.0)
    scene[500:560, 700:780] = 20
    rng = np.random.default_rng(0)
    grey = np.clip(scene + rng.normal(0, 2, scene.shape), 0, 255)
    return np.stack([grey, grey * 0.9, grey * 0.8], axis=-1).astype(np.uint8)


def _encode(pixels: np.ndarray, encoding: str) -> bytes:
    if encoding == "raw8":
        return np.ascontiguousarray(pixels[:, :, 0]).tobytes()
    if encoding == "raw-rgb":
        return np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, format=encoding.upper(), **({"quality": 90} if encoding == "jpeg" else {})
    )
    return buffer.getvalue()


def _at_input(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(
        Image.fromarray(pixels).resize((MODEL, MODEL), Image.Resampling.BILINEAR), dtype=np.float32
    )


@pytest.mark.parametrize("encoding", ["jpeg", "png", "raw8", "raw-rgb"])
def test_a_reduced_frame_is_the_same_picture_at_the_models_input(encoding: str) -> None:
    data = _encode(_frame(), encoding)
    whole = decode_pixels(data, encoding, WIDTH, HEIGHT, max_bytes=64 << 20)
    reduced = decode_frame(data, encoding, WIDTH, HEIGHT, reduce_to=MODEL, max_bytes=64 << 20)
    assert (reduced.width, reduced.height) == (WIDTH, HEIGHT)  # the frame's own size, for regions
    height, width = reduced.pixels.shape[:2]
    assert reduced.pixels.shape[2] == 3 and reduced.pixels.dtype == np.uint8
    assert MODEL <= min(height, width) < 2 * MODEL  # no more than the model needs, never less
    assert width / height == pytest.approx(WIDTH / HEIGHT, rel=0.02)
    difference = np.abs(_at_input(reduced.pixels) - _at_input(whole))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) < 8


def test_without_a_model_size_the_frame_is_decoded_whole() -> None:
    data = _encode(_frame(), "jpeg")
    assert np.array_equal(
        decode_frame(data, "jpeg", None, None).pixels, decode_pixels(data, "jpeg", None, None)
    )


def test_small_frames_and_palette_images_are_not_reduced() -> None:
    small = _frame()[:300, :400]
    data = _encode(small, "png")
    assert decode_frame(data, "png", 400, 300, reduce_to=MODEL).pixels.shape == (300, 400, 3)
    palette = Image.fromarray(_frame()).convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    decoded = decode_frame(buffer.getvalue(), "png", WIDTH, HEIGHT, reduce_to=MODEL)
    assert decoded.pixels.shape == (HEIGHT, WIDTH, 3)  # PIL cannot box-reduce palette indices


def test_the_reduced_path_keeps_every_check() -> None:
    data = _encode(_frame(), "jpeg")
    with pytest.raises(ImageError, match="declared 1600x1201"):
        decode_frame(data, "jpeg", WIDTH, HEIGHT + 1, reduce_to=MODEL)
    with pytest.raises(ImageError) as refused:
        decode_frame(data, "jpeg", None, None, reduce_to=MODEL, max_pixels=WIDTH * HEIGHT - 1)
    assert refused.value.reason == "too_large"
    with pytest.raises(ImageError) as corrupt:
        decode_frame(data[: len(data) // 3], "jpeg", None, None, reduce_to=MODEL)
    assert corrupt.value.reason == "corrupt"
    with pytest.raises(ImageError) as short:
        decode_frame(_encode(_frame(), "raw8")[:-1], "raw8", WIDTH, HEIGHT, reduce_to=MODEL)
    assert short.value.reason == "bad_dimensions"
