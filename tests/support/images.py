"""Pictures as bytes for tests (PNG, JPEG, or any format Pillow writes), and image files written
the ways cameras write them."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def encode_image(pixels: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    """``pixels`` (an array Pillow takes: HxW, HxWx3, HxWx4) encoded as ``fmt``, with Pillow's
    ``options`` (``quality=90``)."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    return encode_image(pixels, "PNG")


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    return encode_image(pixels, "JPEG", quality=90)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A random RGB picture of ``size`` (width, height) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), fmt)


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary dot name, then rename into place (how careful cameras write)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
