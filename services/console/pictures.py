"""A held reject or review as a picture for the page: the frame, or the frame with its heatmap.

The frame is decoded by the one pixel decoder and the map by the one map decoder, both bounded, and
blended with the one colour ramp (``shared.messages.anomaly_map.overlay``), so the console's heatmap
reads like the explainer's. Rendered on request (in a worker thread), a few kept in a small cache.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.capped import CappedMap
from shared.frames_store import ClaimStore, image_of
from shared.limits import MAX_IMAGE_BYTES
from shared.messages.anomaly_map import decode_anomaly_map, overlay
from shared.messages.schemas import DefectEvent

KINDS = ("overlay", "frame")
THUMB_SIDE = 240


@dataclass(frozen=True)
class PictureKey:
    frame_id: str
    kind: str  # one of KINDS
    thumb: bool


def frame_pixels(event: DefectEvent, max_pixels: int, claims: ClaimStore | None = None) -> np.ndarray:
    """The event's frame as ``HxWx3 uint8`` (``ImageError`` when it cannot be decoded within bounds,
    or is claim-checked and cannot be had from ``claims``: ``shared.frames_store.ClaimCheckError``)."""
    # A claim-checked frame is decoded within the store's limits, not max_pixels.
    return image_of(event, claims, max_bytes=MAX_IMAGE_BYTES, max_pixels=max_pixels).pixels(event)


def render(
    event: DefectEvent, kind: str, *, thumb: bool, max_pixels: int, claims: ClaimStore | None = None
) -> bytes:
    """A JPEG of the frame (``frame``) or the frame under its heatmap (``overlay``)."""
    pixels = frame_pixels(event, max_pixels, claims)
    if kind == "overlay":
        pixels = overlay(pixels, decode_anomaly_map(event.anomaly_map_png, max_pixels=max_pixels))
    image = Image.fromarray(pixels)
    if thumb:
        image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


class PictureCache(CappedMap[PictureKey, bytes]):
    """The last few rendered pictures (the overview asks for the same thumbnails again and again)."""

    def __init__(self, max_entries: int = 64) -> None:
        super().__init__("pictures", max_entries)

    def put(self, key: PictureKey, data: bytes) -> None:
        self[key] = data
