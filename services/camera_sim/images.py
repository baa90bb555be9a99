"""The bytes a simulated camera sends for a sample: dataset files as they are, synthetic renders as JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from services.camera_sim.core import IMAGE_SUFFIXES, SampleSpec
from shared.errors import ImageError
from shared.limits import MAX_IMAGE_BYTES
from shared.synthetic import render_sample


def encode_jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sample_image(sample: SampleSpec, size: int = 224) -> tuple[bytes, str]:
    """``(image bytes, encoding)`` for a sample. JPEG and PNG files go out unchanged."""
    if sample.path is None:
        pixels, _ = render_sample(
            sample.product, np.random.default_rng(sample.seed), size, sample.defect_type
        )
        return encode_jpeg(pixels), "jpeg"
    fmt = IMAGE_SUFFIXES.get(sample.path.suffix.lower())
    if sample.path.stat().st_size > MAX_IMAGE_BYTES:  # a frame on the wire could not carry it
        raise ImageError("too_large", f"{sample.path} is larger than {MAX_IMAGE_BYTES} bytes")
    data = sample.path.read_bytes()
    if fmt in ("jpeg", "png"):
        return data, fmt
    with Image.open(io.BytesIO(data)) as image:  # BMP/TIFF: re-encode losslessly as PNG
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue(), "png"
