"""Small image files for the camera gateway's tests, written the ways cameras write them."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    """A random RGB picture of ``size`` (width, height) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary dot name, then rename into place (how careful cameras write)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
