"""Bad frames are bad in the intended way: each kind fails strict frame decoding or image decoding."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from services.camera_sim.badframes import bad_record_value, oversized_png
from services.camera_sim.core import BAD_KINDS
from services.camera_sim.images import encode_jpeg
from shared.messages.codec import MessageError, decode
from shared.messages.schemas import Frame
from tests.support.messages import frame


def test_oversized_png_declares_the_size_and_is_otherwise_valid() -> None:
    data = oversized_png(60_000, 50_000)
    assert struct.unpack(">II", data[16:24]) == (60_000, 50_000)
    # The header parses (its CRC is fixed up), so the declared size reaches the size checks.
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    with Image.open(io.BytesIO(oversized_png(300, 200))) as image:
        assert image.size == (300, 200)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_kind_fails_strict_frame_decoding_or_image_decoding(kind: str) -> None:
    good = frame(image=encode_jpeg(np.zeros((32, 32, 3), np.uint8)))
    value = bad_record_value(kind, good, np.random.default_rng(0))
    if kind in ("corrupt_bytes", "truncated_image"):
        decoded = decode(value, Frame)  # a valid message ...
        assert decoded.image != good.image  # ... with a broken image
        with pytest.raises(OSError):
            Image.open(io.BytesIO(decoded.image)).load()
    else:
        with pytest.raises(MessageError) as err:
            decode(value, Frame)
        assert (
            err.value.reason
            == {
                "wrong_schema": "wrong_schema",
                "oversized_dimensions": "too_large",
                "undecodable": "malformed",
            }[kind]
        )


def test_unknown_bad_kind_is_an_error() -> None:
    with pytest.raises(ValueError):
        bad_record_value("gremlins", frame(image=b"x"), np.random.default_rng(0))
