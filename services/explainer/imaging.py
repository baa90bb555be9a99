"""The pictures of a defect event: frame, heatmap overlay, crop around the top region.

Decoding goes through the engine's bounded decoder (sizes checked before pixels). Nothing here
logs or returns image bytes anywhere but to the caller.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.explainer.geometry import Box, crop_box
from shared.engine.images import ImageError, decode_image, raw_to_rgb

_RAW_CHANNELS = {"raw8": 1, "raw-rgb": 3}
MAX_EVENT_IMAGE_BYTES = 16 << 20
MAX_EVENT_PIXELS = 4096 * 4096


def decode_frame(
    data: bytes,
    encoding: str,
    width: int | None,
    height: int | None,
    *,
    max_bytes: int = MAX_EVENT_IMAGE_BYTES,
    max_pixels: int = MAX_EVENT_PIXELS,
) -> np.ndarray:
    """The event's frame as ``HxWx3 uint8``; raises ``ImageError`` with a reason code."""
    if encoding in _RAW_CHANNELS:
        if width is None or height is None:
            raise ImageError("bad_dimensions", f"{encoding} frame without width and height")
        return raw_to_rgb(data, width, height, _RAW_CHANNELS[encoding], max_pixels=max_pixels)
    if encoding not in ("jpeg", "png"):
        raise ImageError("unsupported_format", f"frame encoding {encoding!r}")
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)


def decode_anomaly_map(png: bytes, *, max_pixels: int = MAX_EVENT_PIXELS) -> np.ndarray:
    """The 8-bit anomaly map (128 = threshold) as ``HxW uint8``."""
    rgb = decode_image(png, max_bytes=MAX_EVENT_IMAGE_BYTES, max_pixels=max_pixels)
    return np.ascontiguousarray(rgb[:, :, 0])


def resize_map(anomaly_map: np.ndarray, width: int, height: int) -> np.ndarray:
    if anomaly_map.shape == (height, width):
        return anomaly_map
    resized = Image.fromarray(anomaly_map).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """A blue-green-yellow-red colour ramp (jet-like) for an ``HxW uint8`` map -> ``HxWx3 uint8``."""
    x = values.astype(np.float32) / 255.0
    red = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([red, green, blue], axis=2) * 255 + 0.5).astype(np.uint8)


def overlay(frame: np.ndarray, anomaly_map: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """The heatmap blended over the frame; cool (below threshold) pixels are blended more lightly
    so the part stays visible."""
    h, w = frame.shape[:2]
    heat = resize_map(anomaly_map, w, h)
    weight = (alpha * np.clip(heat.astype(np.float32) / 128.0, 0.25, 1.0))[:, :, None]
    blended = frame.astype(np.float32) * (1 - weight) + heat_colors(heat).astype(np.float32) * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


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


@dataclass(frozen=True)
class EventPictures:
    """JPEG bytes of what may be shown; ``crop_box`` in frame pixels."""

    frame: bytes
    overlay: bytes
    crop: bytes
    crop_box: Box
    width: int
    height: int


def make_pictures(
    frame: np.ndarray,
    anomaly_map: np.ndarray,
    top_region: tuple[int, int, int, int] | None,
    *,
    frame_max_side: int = 1024,
    crop_max_side: int = 512,
) -> EventPictures:
    """Frame, overlay and the crop around ``top_region`` (x, y, w, h); without a region the crop is
    centred on the heatmap's peak."""
    h, w = frame.shape[:2]
    if top_region is None:
        heat = resize_map(anomaly_map, w, h)
        peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        top_region = (int(peak_x), int(peak_y), 1, 1)
    box = crop_box(*top_region, w, h, min_side=max(64, min(w, h) // 4))
    crop = frame[box.y0 : box.y1, box.x0 : box.x1]
    return EventPictures(
        frame=encode_jpeg(fit_within(frame, frame_max_side)),
        overlay=encode_jpeg(fit_within(overlay(frame, anomaly_map), frame_max_side)),
        crop=encode_jpeg(fit_within(np.ascontiguousarray(crop), crop_max_side)),
        crop_box=box,
        width=w,
        height=h,
    )
