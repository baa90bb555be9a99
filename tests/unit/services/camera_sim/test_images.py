"""What the simulator sends: synthetic samples as JPEGs, dataset files as they are (PNG for others)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.camera_sim.core import DEFECT, NORMAL, SampleSpec
from services.camera_sim.images import sample_image


def test_synthetic_sample_is_a_decodable_jpeg() -> None:
    data, encoding = sample_image(SampleSpec("washer", DEFECT, "spot", seed=3), size=96)
    assert encoding == "jpeg"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (96, 96)


def test_dataset_files_are_sent_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(path)
    assert sample_image(SampleSpec("x", NORMAL, None, path=path)) == (path.read_bytes(), "png")
    bmp = tmp_path / "b.bmp"
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(bmp)
    data, encoding = sample_image(SampleSpec("x", NORMAL, None, path=bmp))
    assert encoding == "png" and data.startswith(b"\x89PNG")


@pytest.mark.parametrize("encoding", ["jpeg", "png", "raw8"])
def test_synthetic_frames_come_at_a_cameras_size_and_encoding(encoding: str) -> None:
    from shared.messages.pixels import decode_pixels

    sample = SampleSpec("washer", DEFECT, "spot", seed=3)
    data, sent_as = sample_image(sample, size=96, frame_size=(400, 300), encoding=encoding, jpeg_quality=90)
    assert sent_as == encoding
    pixels = decode_pixels(data, encoding, 400, 300)
    assert pixels.shape == (300, 400, 3)
    again, _ = sample_image(sample, size=96, frame_size=(400, 300), encoding=encoding, jpeg_quality=90)
    assert again == data  # the same sample is the same frame (seeded noise)
    if encoding == "raw8":
        assert len(data) == 400 * 300
