"""Image decoding with bounds checked before any pixel is decoded.

Every image entering the engine becomes an ``HxWx3 uint8`` RGB array here. Sizes come from the
file header first, so a decompression bomb or an absurd dimension is refused without allocating
its pixels. The limits (bytes, pixels, pixels per side) are the project's (``shared.limits``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np
import simplejpeg
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from shared.errors import ImageError
from shared.limits import MAX_DIMENSION, MAX_FILE_BYTES, MAX_IMAGE_BYTES, MAX_PIXELS

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF"})
ImageSource = Path | np.ndarray  # an image file, or pixels already decoded


def _check_dimensions(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("bad_dimensions", f"image is {width}x{height} pixels")
    if width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise ImageError(
            "too_large", f"image is {width}x{height} pixels, more than {MAX_DIMENSION} on a side"
        )
    if width * height > max_pixels:
        raise ImageError(
            "too_large", f"image is {width}x{height} pixels, more than the limit of {max_pixels}"
        )


# The pixel formats PIL's decoders produce, each held in at most 4 bytes per pixel (PIL keeps
# 3-channel modes in 4). Any other is refused before a pixel is decoded, so decoding never holds more
# than 4 bytes per pixel in PIL plus the 3 of the result, whatever the file says.
_DECODABLE_MODES = frozenset(
    {"1", "L", "P", "I;16", "I;16L", "I;16B", "I;16N", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX"}
    | {"CMYK", "YCbCr", "LAB", "HSV", "I", "F"}
)
_BAND_PIXELS = 1 << 16  # pixels converted at a time: working memory beyond the result stays small
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# PNG text chunks are metadata we never read; PIL lets their decompressed size reach 64 MB.
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, 4 << 20)


def decode_image(
    data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode JPEG/PNG/BMP/TIFF bytes to an ``HxWx3 uint8`` RGB array.

    Grayscale becomes RGB, alpha is composited onto black, 16-bit samples are scaled to 8 bits.
    Size, pixel count and pixel format are checked from the header before decoding; decoding then
    holds PIL's buffer (at most 4 bytes per pixel), the result (3) and one band of rows.
    Raises ``ImageError`` for anything else.
    """
    return decode_image_reduced(data, None, max_bytes=max_bytes, max_pixels=max_pixels)[0]


# Modes PIL's reduce() takes; others (palette, 1-bit, 16-bit) are decoded whole, then converted.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F"})


def reduction_factor(width: int, height: int, min_side: int | None) -> int:
    """The largest whole factor that keeps both sides at least ``min_side`` (1: no reduction)."""
    if min_side is None or min_side < 1:
        return 1
    return max(1, min(width, height) // min_side)


def decode_image_reduced(
    data: bytes, min_side: int | None, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """Like ``decode_image``, but only to the resolution a model of ``min_side`` px needs: both
    sides stay at least ``min_side``. JPEG is decoded DCT-domain scaled (1/2, 1/4, 1/8: libjpeg
    skips the rest of the work); other formats are decoded whole and reduced by a box filter before
    conversion. Returns the pixels and the image's own ``(width, height)``. ``None``: full size.
    """
    if not data:
        raise ImageError("empty", "no image bytes")
    if len(data) > max_bytes:
        raise ImageError("too_large", f"{len(data)} bytes, more than the limit of {max_bytes}")
    turbo = _decode_jpeg_turbo(data, min_side, max_pixels)
    if turbo is not None:
        return turbo
    try:
        with warnings.catch_warnings():
            # PIL warns (and raises past 2x) on its own bomb limit; ours is checked explicitly below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"not a readable image ({type(exc).__name__})") from None
    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise ImageError("unsupported_format", f"format {image.format!r} is not JPEG, PNG, BMP or TIFF")
        width, height = image.size
        _check_dimensions(width, height, max_pixels)
        if image.mode not in _DECODABLE_MODES:
            raise ImageError("unsupported_format", f"pixel format {image.mode!r}")
        if min_side is not None and image.format == "JPEG" and reduction_factor(width, height, min_side) > 1:
            image.draft(image.mode, (min_side, min_side))  # the scale keeps both sides >= min_side
        expected = image.size
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError("corrupt", f"pixel data cannot be decoded ({exc})") from None
        if image.size != expected or image.mode not in _DECODABLE_MODES:
            raise ImageError("corrupt", f"decoded {image.mode} {image.size} differs from the header")
        decoded: Image.Image = image
        factor = reduction_factor(*expected, min_side)
        if factor > 1 and image.mode in _REDUCIBLE_MODES:
            decoded = image.reduce(factor)  # a box filter in C, before any conversion
        return _to_rgb(decoded), (width, height)


_JPEG_START = b"\xff\xd8\xff"  # SOI, then the next marker
_TURBO_COLOURS = frozenset({"YCbCr", "Gray", "RGB"})  # CMYK and YCCK: PIL converts them
_DCT_SCALES = (8, 4, 2)  # PIL's draft scales, largest first


def _decode_jpeg_turbo(
    data: bytes, min_side: int | None, max_pixels: int
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A JPEG through libjpeg-turbo's own API, which decodes a 5 MP frame DCT-scaled in about 2/3
    of the time PIL takes with the same library (docs/benchmarks.md), to the same pixels: the same
    power-of-two scale as PIL's ``draft``, then the same box reduction. None when PIL must decide:
    not a JPEG, CMYK or YCCK, or anything libjpeg merely warns about (PIL decodes those; such a
    frame is parsed twice, within the same per-record decode timeout)."""
    if not data.startswith(_JPEG_START):
        return None
    try:
        height, width, colours, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colours not in _TURBO_COLOURS:
        return None
    width, height = int(width), int(height)
    _check_dimensions(width, height, max_pixels)
    factor = reduction_factor(width, height, min_side)
    scale = next((s for s in _DCT_SCALES if factor >= s), 1)
    try:
        # The smallest libjpeg-turbo scale whose output covers these is exactly 1 / scale.
        pixels = simplejpeg.decode_jpeg(
            data, "RGB", min_height=-(-height // scale), min_width=-(-width // scale), strict=True
        )
    except ValueError:
        return None
    rest = reduction_factor(pixels.shape[1], pixels.shape[0], min_side)
    if rest > 1:
        pixels = np.asarray(Image.fromarray(pixels).reduce(rest))
    return pixels, (width, height)


def _bands(image: Image.Image) -> Iterator[tuple[int, int, Image.Image]]:
    """The image as consecutive bands of whole rows: (first row, end row, band)."""
    width, height = image.size
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        yield top, bottom, image.crop((0, top, width, bottom))


def _to_rgb(image: Image.Image) -> np.ndarray:
    """PIL's decoded image as ``HxWx3 uint8``, converted a band at a time into the result."""
    width, height = image.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        for top, bottom, band in _bands(image):
            # 16-bit data: the full 16-bit range onto 8 bits, rounded (not a per-image stretch).
            samples = np.clip(np.asarray(band), 0, 65535).astype(np.int32)
            samples += 128
            samples //= 257
            out[top:bottom] = samples[:, :, None]
        return out
    if mode == "F":
        # Float samples are scaled by the image's range: a first pass finds its maximum.
        top_value = max(
            (float(np.nan_to_num(np.asarray(band, dtype=np.float32)).max()) for _, _, band in _bands(image)),
            default=0.0,
        )
        scale = 255.0 if top_value <= 1.0 else (255.0 / 65535.0 if top_value > 255.0 else 1.0)
        for top, bottom, band in _bands(image):
            samples = np.nan_to_num(np.asarray(band, dtype=np.float32))
            out[top:bottom] = np.clip(samples * scale + 0.5, 0, 255).astype(np.uint8)[:, :, None]
        return out
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info)
    for top, bottom, band in _bands(image):
        if has_alpha:
            rgba = np.asarray(band.convert("RGBA"))
            alpha = rgba[:, :, 3:4].astype(np.uint16)
            # round(colour * alpha / 255), exactly, in 16-bit integers
            out[top:bottom] = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
        else:
            out[top:bottom] = np.asarray(band if band.mode == "RGB" else band.convert("RGB"))
    return out


def raw_to_rgb(
    data: bytes,
    width: int,
    height: int,
    channels: int,
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int | None = None,
) -> np.ndarray:
    """Interpret raw 8-bit pixels (gray, RGB or RGBA, row-major) as an ``HxWx3 uint8`` array;
    gray and RGB frames reduced by a box filter first to what a ``min_side``-px model needs."""
    if not data:
        raise ImageError("empty", "no image bytes")
    if channels not in (1, 3, 4):
        raise ImageError("bad_dimensions", f"{channels} channels; raw frames have 1, 3 or 4")
    _check_dimensions(width, height, max_pixels)
    expected = width * height * channels
    if len(data) != expected:
        raise ImageError(
            "bad_dimensions", f"{len(data)} bytes, but {width}x{height}x{channels} needs {expected}"
        )
    factor = reduction_factor(width, height, min_side)
    if factor > 1 and channels in (1, 3):
        mode = "L" if channels == 1 else "RGB"
        reduced = Image.frombuffer(mode, (width, height), data, "raw", mode, 0, 1).reduce(factor)
        small = np.asarray(reduced, dtype=np.uint8)
        return np.repeat(small[:, :, None], 3, axis=2) if channels == 1 else small.copy()
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if channels == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        return np.clip(pixels[:, :, :3] * alpha + 0.5, 0, 255).astype(np.uint8)
    return pixels.copy()


def load_image_file(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Read and decode an image file (same checks as ``decode_image``)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageError("too_large", f"{path.name} is {size} bytes, more than the limit of {max_bytes}")
    return decode_image(path.read_bytes(), max_bytes=max_bytes)


def validate_rgb(image: np.ndarray, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Check an already decoded array is ``HxWx3 uint8`` (what the model accepts)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ImageError("bad_dimensions", f"expected an HxWx3 array, got shape {shape}")
    if image.dtype != np.uint8:
        raise ImageError("unsupported_format", f"expected uint8 pixels, got {image.dtype}")
    _check_dimensions(image.shape[1], image.shape[0], max_pixels)
    return image


def load_source(source: ImageSource) -> np.ndarray:
    """An image given as a file or as an array, as ``HxWx3 uint8``."""
    if isinstance(source, np.ndarray):
        return validate_rgb(source)
    return load_image_file(source)


class LazyImages(Sequence[np.ndarray]):
    """Images read from their sources when accessed, so that scorers that never look at pixels
    cost nothing."""

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self._sources = list(sources)

    def __len__(self) -> int:
        return len(self._sources)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> LazyImages: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | LazyImages:
        if isinstance(index, slice):
            return LazyImages(self._sources[index])
        return load_source(self._sources[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (load_source(source) for source in self._sources)
