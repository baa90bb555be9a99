"""Synthetic products with injected defects, for tests, demos and benchmarks.

Each product is rendered procedurally from a random generator, so any number of normal variants
can be drawn; a defect (scratch, spot, missing piece) is drawn on top and its pixel mask returned.
Two textured products (``fabric``, ``marble``) and two object-like ones (``washer``, ``pcb``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SYNTHETIC_CLASSES: tuple[str, ...] = ("fabric", "washer", "pcb", "marble")
DEFECT_TYPES = ("scratch", "spot", "missing")

Canvas = np.ndarray  # HxWx3 float32 in 0..255


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return ys, xs


def _noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, (size, size, 1)).astype(np.float32)


def _fabric(rng: np.random.Generator, size: int) -> tuple[Canvas, np.ndarray]:
    ys, xs = _grid(size)
    period = size / 18.0
    phase = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * xs / period + phase[0])
    weft = np.sin(2 * np.pi * ys / period + phase[1])
    weave = 0.5 + 0.25 * warp * np.sign(weft) + 0.25 * weft * np.sign(warp)
    base = np.array([196, 170, 128], np.float32) * rng.uniform(0.95, 1.05)
    img = base[None, None, :] * (0.75 + 0.35 * weave[:, :, None]) + _noise(rng, size, 4.0)
    return img, np.ones((size, size), bool)


def _marble(rng: np.random.Generator, size: int) -> tuple[Canvas, np.ndarray]:
    ys, xs = _grid(size)
    coarse = rng.normal(0, 1, (9, 9)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    angle = rng.uniform(0, np.pi)
    veins = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) / size * 14.0 + 3.0 * field)
    shade = 0.8 + 0.15 * veins[:, :, None]
    base = np.array([150, 160, 175], np.float32) * rng.uniform(0.95, 1.05)
    return base[None, None, :] * shade + _noise(rng, size, 3.0), np.ones((size, size), bool)


def _washer(rng: np.random.Generator, size: int) -> tuple[Canvas, np.ndarray]:
    ys, xs = _grid(size)
    cy, cx = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    radius = np.hypot(ys - cy, xs - cx)
    outer, inner = 0.38 * size, 0.17 * size
    ring = (radius <= outer) & (radius >= inner)
    background = np.array([30, 42, 70], np.float32)
    metal = 170 + 40 * np.cos((xs - cx) / size * 3.0)[:, :, None] * np.array([1, 1, 1], np.float32)
    img = np.where(ring[:, :, None], metal, background[None, None, :])
    return img + _noise(rng, size, 3.0), ring


def _pcb(rng: np.random.Generator, size: int) -> tuple[Canvas, np.ndarray]:
    board = np.array([25, 110, 45], np.float32)
    img = np.broadcast_to(board, (size, size, 3)).copy()
    unit = size / 16.0
    copper = np.array([200, 150, 60], np.float32)
    offset = rng.integers(-1, 2, 2)
    for row in (3, 7, 11):  # horizontal traces
        y = int((row + 0.5) * unit) + offset[0]
        img[y : y + max(2, int(unit * 0.35)), int(unit) : size - int(unit)] = copper
    for col in (4, 12):  # vertical traces
        x = int(col * unit) + offset[1]
        img[int(unit) : size - int(unit), x : x + max(2, int(unit * 0.35))] = copper
    chip = np.array([35, 35, 38], np.float32)
    for top, left in ((4, 6), (9, 2), (9, 9)):  # chips
        y0, x0 = int(top * unit) + offset[0], int(left * unit) + offset[1]
        img[y0 : y0 + int(2.5 * unit), x0 : x0 + int(3.5 * unit)] = chip
    parts = np.abs(img - board[None, None, :]).sum(axis=2) > 30
    return img + _noise(rng, size, 3.0), parts


PRODUCTS: dict[str, Callable[[np.random.Generator, int], tuple[Canvas, np.ndarray]]] = {
    "fabric": _fabric,
    "washer": _washer,
    "pcb": _pcb,
    "marble": _marble,
}
_BACKGROUND = {
    "fabric": np.array([20, 20, 22], np.float32),  # a hole shows the dark conveyor below
    "marble": np.array([20, 20, 22], np.float32),
    "washer": np.array([30, 42, 70], np.float32),
    "pcb": np.array([25, 110, 45], np.float32),
}


def _scratch(rng: np.random.Generator, img: Canvas, part: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    ys, xs = _grid(size)
    candidates = np.argwhere(part[size // 5 : -size // 5, size // 5 : -size // 5]) + size // 5
    y0, x0 = candidates[rng.integers(len(candidates))].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.25, 0.4) * size
    dy, dx = np.sin(angle), np.cos(angle)
    along = (ys - y0) * dy + (xs - x0) * dx
    across = np.abs(-(ys - y0) * dx + (xs - x0) * dy)
    mask = (across <= max(1.5, size / 90)) & (np.abs(along) <= length / 2)
    img[mask] = np.array([245, 245, 240], np.float32)
    return mask


def _spot(rng: np.random.Generator, img: Canvas, part: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    ys, xs = _grid(size)
    candidates = np.argwhere(part[size // 6 : -size // 6, size // 6 : -size // 6]) + size // 6
    cy, cx = candidates[rng.integers(len(candidates))].astype(np.float32)
    ry, rx = rng.uniform(0.04, 0.07, 2) * size
    mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
    img[mask] = np.array([90, 40, 20], np.float32) + rng.normal(0, 5, 3).astype(np.float32)
    return mask


def _missing(rng: np.random.Generator, img: Canvas, part: np.ndarray, product: str) -> np.ndarray:
    size = img.shape[0]
    ys, xs = _grid(size)
    candidates = np.argwhere(part[size // 5 : -size // 5, size // 5 : -size // 5]) + size // 5
    cy, cx = candidates[rng.integers(len(candidates))].astype(np.float32)
    half = rng.uniform(0.07, 0.11) * size
    square = (np.abs(ys - cy) <= half) & (np.abs(xs - cx) <= half)
    mask = square & part  # only pixels that belonged to the product go missing
    img[mask] = _BACKGROUND[product]
    return mask


def render_sample(
    product: str, rng: np.random.Generator, size: int = 224, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image of ``product``, optionally with a defect.

    Returns ``(HxWx3 uint8 image, HxW uint8 mask with 0/255)``.
    """
    if product not in PRODUCTS:
        raise ValueError(f"unknown synthetic product {product!r}; choose from {', '.join(PRODUCTS)}")
    if defect is not None and defect not in DEFECT_TYPES:
        raise ValueError(f"unknown defect {defect!r}; choose from {', '.join(DEFECT_TYPES)}")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    img, part = PRODUCTS[product](rng, size)
    img = img * rng.uniform(0.96, 1.04)  # lighting varies a little between frames
    mask = np.zeros((size, size), bool)
    if defect == "scratch":
        mask = _scratch(rng, img, part)
    elif defect == "spot":
        mask = _spot(rng, img, part)
    elif defect == "missing":
        mask = _missing(rng, img, part, product)
    pixels = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return pixels, (mask.astype(np.uint8) * 255)


def write_mvtec_dataset(
    root: Path,
    products: Sequence[str],
    n_train: int,
    n_test_good: int,
    n_test_defect: int,
    size: int = 224,
    seed: int = 0,
) -> Path:
    """Write products in MVTec AD layout under ``root``; returns ``root``.

    ``n_test_defect`` is the number of defective test images per product, spread round-robin over
    ``DEFECT_TYPES``. Same arguments give byte-identical files.
    """
    root = Path(root)
    for product in products:
        rng = np.random.default_rng([seed, zlib.crc32(product.encode())])
        base = root / product
        for split, count in (("train", n_train), ("test", n_test_good)):
            folder = base / split / "good"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels, _ = render_sample(product, rng, size)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        for i in range(n_test_defect):
            defect = DEFECT_TYPES[i % len(DEFECT_TYPES)]
            pixels, mask = render_sample(product, rng, size, defect)
            (base / "test" / defect).mkdir(parents=True, exist_ok=True)
            (base / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(base / "test" / defect / f"{i:03d}.png")
            Image.fromarray(mask).save(base / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root
