"""The anomaly map on the wire and on screen: one encoding, one colour ramp.

On the wire (``DefectEvent.anomaly_map_png``) a normalised map (0.5 = the class threshold) is an
8-bit grayscale PNG where ``THRESHOLD_LEVEL`` (128) is the threshold: level = round(256 * score),
clipped to 0..255. Overlays (explainer reports, ``lineguard score --overlay-dir``, the console)
use ``heat_colours`` so every picture of a map reads the same.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.engine.images import decode_image
from shared.limits import MAX_IMAGE_BYTES, MAX_PIXELS

THRESHOLD_LEVEL = 128  # the 8-bit level of a normalised score of 0.5, the class threshold
_LEVELS_PER_UNIT = 2 * THRESHOLD_LEVEL


def to_levels(normalised_map: np.ndarray) -> np.ndarray:
    """A normalised float map as 8-bit levels; non-finite values become 255 (never hidden as 0)."""
    values = np.nan_to_num(np.asarray(normalised_map, dtype=np.float32), nan=1.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(values * _LEVELS_PER_UNIT), 0, 255).astype(np.uint8)


def resize_levels(levels: np.ndarray, width: int, height: int) -> np.ndarray:
    """An 8-bit map resized (bilinear) to ``width`` x ``height``."""
    if levels.shape == (height, width):
        return levels
    resized = Image.fromarray(levels, mode="L").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def encode_anomaly_map(normalised_map: np.ndarray, width: int, height: int) -> bytes:
    """The wire PNG of a normalised map, at ``width`` x ``height`` (the frame's size)."""
    levels = resize_levels(to_levels(normalised_map), width, height)
    buffer = io.BytesIO()
    Image.fromarray(levels, mode="L").save(buffer, format="PNG", compress_level=1)  # on the hot path
    return buffer.getvalue()


def decode_anomaly_map(png: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The wire PNG as ``HxW uint8`` levels (``THRESHOLD_LEVEL`` = the threshold)."""
    rgb = decode_image(png, max_bytes=MAX_IMAGE_BYTES, max_pixels=max_pixels)
    return np.ascontiguousarray(rgb[:, :, 0])


def heat_colours(levels: np.ndarray) -> np.ndarray:
    """A blue-green-yellow-red ramp (jet-like) for ``HxW uint8`` levels -> ``HxWx3 uint8``."""
    x = levels.astype(np.float32) / 255.0
    red = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([red, green, blue], axis=2) * 255 + 0.5).astype(np.uint8)


def overlay(frame: np.ndarray, levels: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """The heatmap blended over an ``HxWx3`` frame; pixels below the threshold are blended more
    lightly so the part stays visible."""
    height, width = frame.shape[:2]
    heat = resize_levels(levels, width, height)
    weight = (alpha * np.clip(heat.astype(np.float32) / THRESHOLD_LEVEL, 0.25, 1.0))[:, :, None]
    blended = frame.astype(np.float32) * (1 - weight) + heat_colours(heat).astype(np.float32) * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
