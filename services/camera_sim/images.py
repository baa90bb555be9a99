"""The bytes a simulated camera sends for a sample: dataset files as they are, synthetic renders as JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from services.camera_sim.core import IMAGE_SUFFIXES, SampleSpec
from shared.errors import ConfigError, ImageError
from shared.limits import MAX_IMAGE_BYTES
from shared.synthetic import render_sample


def encode_jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


SYNTHETIC_ENCODINGS = ("jpeg", "png", "raw8")
SENSOR_NOISE = 2.0  # std of the noise added to scaled-up renders, in grey levels (a camera's, roughly)


def camera_frame(pixels: np.ndarray, frame_size: tuple[int, int], seed: int) -> np.ndarray:
    """A render scaled up to ``frame_size`` (width, height), bicubic, with sensor noise: what a large
    camera frame of the same scene holds (without the noise, upscaled frames compress unrealistically)."""
    scaled = Image.fromarray(pixels).resize(frame_size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0.0, SENSOR_NOISE, (frame_size[1], frame_size[0], 1))
    return np.clip(np.asarray(scaled, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def encode_frame(pixels: np.ndarray, encoding: str, jpeg_quality: int = 92) -> bytes:
    """``pixels`` (HxWx3 uint8) as a frame's image bytes in ``encoding`` (raw8: their grey level)."""
    if encoding == "jpeg":
        return encode_jpeg(pixels, jpeg_quality)
    if encoding == "png":
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)  # what cameras afford
        return buffer.getvalue()
    if encoding == "raw8":
        return np.ascontiguousarray(Image.fromarray(pixels).convert("L")).tobytes()
    raise ConfigError(f"unknown frame encoding {encoding!r}; choose one of {', '.join(SYNTHETIC_ENCODINGS)}")


def sample_image(
    sample: SampleSpec,
    size: int = 224,
    *,
    frame_size: tuple[int, int] | None = None,
    encoding: str = "jpeg",
    jpeg_quality: int = 92,
) -> tuple[bytes, str]:
    """``(image bytes, encoding)`` for a sample. JPEG and PNG files go out unchanged; synthetic renders
    are scaled up to ``frame_size`` if given and encoded in ``encoding``."""
    if sample.path is None:
        pixels, _ = render_sample(
            sample.product, np.random.default_rng(sample.seed), size, sample.defect_type
        )
        if frame_size is not None:
            pixels = camera_frame(pixels, frame_size, sample.seed)
        return encode_frame(pixels, encoding, jpeg_quality), encoding
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
