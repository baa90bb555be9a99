"""The frames store: frame ids become safe file names; frames come back as they were saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import ImageError
from shared.frames_store import FrameImage, FrameStore, frame_file_stem
from tests.support.images import png_bytes
from tests.support.messages import frame


def test_file_names_are_the_id_only_when_harmless() -> None:
    assert frame_file_stem("cam-1_000123.5") == "cam-1_000123.5"
    for odd in ("../x", "a/b", ".hidden", "x" * 200, "é", "a."):
        stem = frame_file_stem(odd)
        assert "/" not in stem and not stem.startswith(".") and len(stem) <= 100
    assert frame_file_stem("a/b") != frame_file_stem("a_b")


def test_a_saved_frame_loads_back_and_a_missing_one_is_none(tmp_path: Path) -> None:
    store = FrameStore(tmp_path / "frames")
    pixels = np.random.default_rng(0).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    path = store.save("f/1", pixels)
    assert path.parent == tmp_path / "frames"
    loaded = store.load("f/1")
    assert loaded is not None and np.array_equal(loaded, pixels)
    assert store.load("f-2") is None
    store.path("f-3").write_bytes(b"not an image")
    with pytest.raises(ImageError):
        store.load("f-3")


def test_a_frame_image_decodes_at_the_declared_size_within_its_own_bounds() -> None:
    pixels = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    message = frame(encoding="png", image=png_bytes(pixels), width=12, height=10)
    assert np.array_equal(FrameImage(png_bytes(pixels), 1 << 20, 120).pixels(message), pixels)
    with pytest.raises(ImageError):
        FrameImage(png_bytes(pixels), 1 << 20, 119).pixels(message)  # over its pixel bound
    with pytest.raises(ImageError):
        FrameImage(png_bytes(pixels), 1 << 20, 120).pixels(frame(encoding="png", width=13, height=10))
