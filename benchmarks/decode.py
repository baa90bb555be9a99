"""Decoding camera frames for a model: the whole frame (before) against only what the model needs.

    .venv/bin/python -m benchmarks.decode [--input-size 224] [--repeats 7]

Frames of 0.3, 2, 5 and 12 megapixels (640x480, 1600x1200, 2448x2048, 4000x3000): synthetic
products rendered, scaled up and given sensor noise as a camera frame would have them
(``services.camera_sim.images.camera_frame``), encoded as JPEG (quality 90), PNG (compression level
1) and raw8 (mono8). For each: milliseconds per frame to decode the whole frame
(``decode_pixels``, what the scorer did before) and to decode it reduced for a model of
``--input-size`` px (``decode_frame``: JPEG by DCT-domain scaling, PNG and raw frames by an early
box reduction), each alone and followed by the model's resize to its input (the part of
``FeatureExtractor.preprocess`` that depends on the frame size). JPEG frames also: the same reduced
decode through PIL alone (``draft``), the reference for libjpeg-turbo's own API that
``decode_frame`` now uses (checked to give the same pixels). Pinned to one core, median of
``--repeats``. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from benchmarks.harness import print_report, print_row
from services.camera_sim.images import camera_frame, encode_frame
from shared.engine.images import reduction_factor
from shared.messages.pixels import decode_frame, decode_pixels
from shared.synthetic import render_sample

SIZES = {"0.3 MP": (640, 480), "2 MP": (1600, 1200), "5 MP": (2448, 2048), "12 MP": (4000, 3000)}
ENCODINGS = ("jpeg", "png", "raw8")
NO_LIMIT = 1 << 30  # the benchmark measures decoding, not the wire's size limit (8 MiB)


def median_ms(work: Callable[[], object], repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 2)


def to_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """The model's resize (``FeatureExtractor.preprocess``): antialiased bilinear to size x size."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


def pil_reduced(data: bytes, size: int | None) -> np.ndarray:
    """The reduced decode through PIL alone (the scorer's JPEG path before libjpeg-turbo's own
    API): DCT-scaled ``draft``, then the box reduction; the same pixels as ``decode_frame``.
    ``None``: the whole image."""
    with Image.open(io.BytesIO(data)) as image:
        if size is not None:
            image.draft(image.mode, (size, size))
        image.load()
        factor = reduction_factor(*image.size, size)
        return np.asarray((image.reduce(factor) if factor > 1 else image).convert("RGB"))


def measure(data: bytes, encoding: str, frame: tuple[int, int], size: int, repeats: int) -> dict[str, object]:
    width, height = frame

    def before() -> np.ndarray:
        return decode_pixels(data, encoding, width, height, max_bytes=NO_LIMIT)

    def after() -> np.ndarray:
        return decode_frame(data, encoding, width, height, reduce_to=size, max_bytes=NO_LIMIT).pixels

    whole_ms = median_ms(lambda: to_input(before(), size), repeats)
    reduced_ms = median_ms(lambda: to_input(after(), size), repeats)
    row: dict[str, object] = {
        "bytes": len(data),
        "decoded_to": "x".join(map(str, after().shape[1::-1])),
        "before_decode_ms": median_ms(before, repeats),
        "after_decode_ms": median_ms(after, repeats),
        "before_decode_and_resize_ms": whole_ms,
        "after_decode_and_resize_ms": reduced_ms,
        "speedup_decode_and_resize": round(whole_ms / reduced_ms, 1),
    }
    if encoding == "jpeg":
        if not np.array_equal(pil_reduced(data, size), after()):
            raise SystemExit("decode_frame and PIL's reduced decode disagree")
        row["after_pil_decode_ms"] = median_ms(lambda: pil_reduced(data, size), repeats)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    scene, _ = render_sample("washer", np.random.default_rng(0), 512, "scratch")
    size = args.input_size
    results: dict[str, dict[str, object]] = {}
    for label in args.sizes:
        width, height = SIZES[label]
        pixels = camera_frame(scene, (width, height), seed=1)
        for encoding in ENCODINGS:
            data = encode_frame(pixels, encoding, jpeg_quality=90)
            entry = measure(data, encoding, (width, height), size, args.repeats)
            results[f"{label} {encoding}"] = entry
            print_row(f"{label} {encoding}", entry)
    report = {
        "machine": f"{platform.machine()}, one core, Pillow {Image.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}",
        "input_size": size,
        "results": results,
    }
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
