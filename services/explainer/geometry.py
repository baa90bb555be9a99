"""Where things are on the part, in words, and whether a stated location matches the heatmap.

Positions are cells of a 3x3 grid over the image. The codes below are language-neutral identifiers
(also the enum the VLM must answer with); ``i18n`` turns them into words for the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import ImageError
from shared.messages.anomaly_map import THRESHOLD_LEVEL

POSITION_CODES: tuple[str, ...] = (
    "upper left",
    "upper middle",
    "upper right",
    "middle left",
    "center",
    "middle right",
    "lower left",
    "lower middle",
    "lower right",
)
# Not a cell: the VLM may say the defect spans the part; checked against how spread the heat is.
WHOLE_PART = "whole part"
LOCATION_CODES: tuple[str, ...] = (*POSITION_CODES, WHOLE_PART)

# A stated cell agrees with the heatmap when it holds at least this share of the hot pixels.
MIN_AGREEING_SHARE = 0.15


@dataclass(frozen=True)
class Box:
    """A pixel rectangle, half-open: [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def position_code(cx: float, cy: float) -> str:
    """Grid cell of a point given as fractions of the image width and height (0..1)."""
    col = min(2, max(0, int(cx * 3)))
    row = min(2, max(0, int(cy * 3)))
    return POSITION_CODES[row * 3 + col]


def region_position(x: int, y: int, width: int, height: int, image_width: int, image_height: int) -> str:
    """Grid cell of a region's centre."""
    if image_width <= 0 or image_height <= 0:
        raise ImageError("bad_dimensions", f"image size {image_width}x{image_height} is not positive")
    return position_code((x + width / 2) / image_width, (y + height / 2) / image_height)


def elongation(width: int, height: int) -> float:
    """Long side over short side (1 for a square); used to tell scratches from spots."""
    short = max(1, min(width, height))
    return max(width, height) / short


def crop_box(
    x: int,
    y: int,
    width: int,
    height: int,
    image_width: int,
    image_height: int,
    *,
    margin: float = 0.5,
    min_side: int = 64,
) -> Box:
    """A box around a region, grown by ``margin`` of its size on each side (context for the
    viewer) and to at least ``min_side`` pixels, clipped to the image."""
    if image_width <= 0 or image_height <= 0:
        raise ImageError("bad_dimensions", f"image size {image_width}x{image_height} is not positive")
    grow_x = max(width * margin, (min_side - width) / 2, 0.0)
    grow_y = max(height * margin, (min_side - height) / 2, 0.0)
    x0 = int(max(0, np.floor(x - grow_x)))
    y0 = int(max(0, np.floor(y - grow_y)))
    x1 = int(min(image_width, np.ceil(x + width + grow_x)))
    y1 = int(min(image_height, np.ceil(y + height + grow_y)))
    if x1 <= x0 or y1 <= y0:  # a region outside the image: fall back to the whole image
        return Box(0, 0, image_width, image_height)
    return Box(x0, y0, x1, y1)


def hot_mask(levels: np.ndarray) -> np.ndarray:
    """The pixels the 8-bit anomaly map calls anomalous: at or above ``THRESHOLD_LEVEL`` (the class
    threshold), or the upper half of the map's range when nothing reaches it."""
    if levels.ndim != 2 or levels.size == 0:
        raise ImageError("bad_dimensions", f"anomaly map must be a non-empty 2-D array, got {levels.shape}")
    values = levels.astype(np.float32)
    top = float(values.max())
    if top <= 0:
        return np.zeros(values.shape, dtype=bool)
    level = float(THRESHOLD_LEVEL) if top >= THRESHOLD_LEVEL else top * 0.5
    return values >= level


def cell_shares(levels: np.ndarray) -> dict[str, float]:
    """Share of the hot pixels falling into each grid cell (all zero when nothing is hot)."""
    mask = hot_mask(levels)
    total = int(mask.sum())
    h, w = mask.shape
    shares: dict[str, float] = {}
    for index, code in enumerate(POSITION_CODES):
        row, col = divmod(index, 3)
        cell = mask[row * h // 3 : (row + 1) * h // 3, col * w // 3 : (col + 1) * w // 3]
        shares[code] = float(cell.sum()) / total if total else 0.0
    return shares


@dataclass(frozen=True)
class LocationCheck:
    stated: str
    agrees: bool
    observed: tuple[str, ...]  # cells where the heatmap puts the anomaly, most heat first
    share: float  # heat share of the stated cell (for "whole part": cells with notable heat / 9)


def check_location(stated: str, shares: dict[str, float], region_cells: list[str]) -> LocationCheck:
    """Does the VLM's stated location match the heatmap?

    It agrees when the stated cell contains a scored region's centre or holds at least
    ``MIN_AGREEING_SHARE`` of the hot pixels; "whole part" agrees when four or more cells do.
    """
    observed = tuple(
        code for code, share in sorted(shares.items(), key=lambda kv: -kv[1]) if share >= MIN_AGREEING_SHARE
    )
    observed = tuple(dict.fromkeys([*observed, *region_cells]))
    if stated == WHOLE_PART:
        notable = sum(1 for share in shares.values() if share >= 0.05)
        return LocationCheck(stated, notable >= 4, observed, notable / 9)
    if stated not in POSITION_CODES:
        return LocationCheck(stated, False, observed, 0.0)
    share = shares.get(stated, 0.0)
    return LocationCheck(stated, stated in region_cells or share >= MIN_AGREEING_SHARE, observed, share)
