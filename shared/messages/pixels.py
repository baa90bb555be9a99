"""A frame's pixels from its wire form: the one decoder the scorer and the explainer share.

Sizes are checked before any pixel is allocated: the byte count here, the declared dimensions of
raw encodings against their byte count, and an encoded image's header by the engine's bounded
decoder (``shared.engine.images``), with the same per-side and pixel limits the output messages
accept (``shared.limits``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.engine.images import decode_image_reduced, raw_to_rgb
from shared.errors import ImageError
from shared.limits import MAX_IMAGE_BYTES, MAX_PIXELS

ENCODINGS = ("jpeg", "png", "raw8", "raw-rgb")
RAW_CHANNELS = {"raw8": 1, "raw-rgb": 3}  # bytes per pixel of the raw encodings, rows top to bottom


@dataclass(frozen=True)
class FramePixels:
    """A frame decoded for a model: its pixels, possibly reduced, and the frame's own size."""

    pixels: np.ndarray  # HxWx3 uint8 RGB
    width: int  # of the frame as sent
    height: int


def decode_pixels(
    image: bytes,
    encoding: str,
    width: int | None,
    height: int | None,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """The image as ``HxWx3 uint8`` RGB at its full size; raises ``ImageError`` with a reason code.

    Declared dimensions, when given, must match the decoded image.
    """
    return decode_frame(image, encoding, width, height, max_bytes=max_bytes, max_pixels=max_pixels).pixels


def decode_frame(
    image: bytes,
    encoding: str,
    width: int | None,
    height: int | None,
    *,
    reduce_to: int | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> FramePixels:
    """The frame decoded only as far as a model of ``reduce_to`` px needs (both sides stay at least
    ``reduce_to``; None: full size): JPEG by DCT-domain scaling, PNG and raw frames by a box filter
    before conversion. Same checks and errors as ``decode_pixels``."""
    if encoding in RAW_CHANNELS:
        if width is None or height is None:
            raise ImageError("bad_dimensions", f"{encoding} frame without width and height")
        pixels = raw_to_rgb(
            image, width, height, RAW_CHANNELS[encoding], max_pixels=max_pixels, min_side=reduce_to
        )
        return FramePixels(pixels, width, height)
    if encoding not in ENCODINGS:
        raise ImageError("unsupported_format", f"frame encoding {encoding!r}")
    if width is not None and height is not None and width * height > max_pixels:
        raise ImageError("too_large", f"declared {width}x{height} is over the limit of {max_pixels} pixels")
    pixels, (actual_width, actual_height) = decode_image_reduced(
        image, reduce_to, max_bytes=max_bytes, max_pixels=max_pixels
    )
    if width is not None and height is not None and (width, height) != (actual_width, actual_height):
        raise ImageError(
            "bad_dimensions", f"declared {width}x{height}, image is {actual_width}x{actual_height}"
        )
    return FramePixels(pixels, actual_width, actual_height)
