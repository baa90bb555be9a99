"""The pictures a report shows and a prompt may send: frame, heatmap overlay, crop around the top
region, and few-shot references, all as JPEG.

Decoding happens before this (``facts.py``, through ``shared.messages``); nothing here logs or
returns image bytes anywhere but to the caller.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.explainer.geometry import Box, crop_box
from shared.messages.anomaly_map import overlay, resize_levels
from shared.messages.schemas import RegionMsg


@dataclass(frozen=True)
class EventPictures:
    """JPEG bytes of what may be shown; ``crop_box`` in frame pixels."""

    frame: bytes
    overlay: bytes
    crop: bytes
    crop_box: Box
    width: int
    height: int


@dataclass(frozen=True)
class Reference:
    """A few-shot reference picture of the class: ``label`` is "normal" or "defective"."""

    label: str
    jpeg: bytes


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (never upscale)."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def encode_jpeg(image: np.ndarray, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def make_pictures(
    frame: np.ndarray,
    levels: np.ndarray,
    top_region: RegionMsg | None,
    *,
    frame_max_side: int = 1024,
    crop_max_side: int = 512,
) -> EventPictures:
    """Frame, overlay of the anomaly map's ``levels`` and the crop around ``top_region``; without
    a region the crop is centred on the heatmap's peak."""
    h, w = frame.shape[:2]
    min_side = max(64, min(w, h) // 4)
    if top_region is None:
        heat = resize_levels(levels, w, h)
        peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        box = crop_box(int(peak_x), int(peak_y), 1, 1, w, h, min_side=min_side)
    else:
        r = top_region
        box = crop_box(r.x, r.y, r.width, r.height, w, h, min_side=min_side)
    crop = frame[box.y0 : box.y1, box.x0 : box.x1]
    return EventPictures(
        frame=encode_jpeg(fit_within(frame, frame_max_side)),
        overlay=encode_jpeg(fit_within(overlay(frame, levels), frame_max_side)),
        crop=encode_jpeg(fit_within(np.ascontiguousarray(crop), crop_max_side)),
        crop_box=box,
        width=w,
        height=h,
    )
