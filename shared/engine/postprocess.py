"""Patch scores -> anomaly map, image score and regions; score normalisation."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from shared.engine.config import ImageScoreMode, Region


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(4 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=64)
def _axis_operator(cells: int, size: int, sigma: float) -> torch.Tensor:
    """``(size, cells)``: bilinear upsampling of ``cells`` values to ``size`` pixels, then the
    Gaussian blur over replicated edges, along one axis.

    Both steps are linear and separable, so one small matrix per axis does them together: applied
    to a 28 x 28 grid it costs a fraction of blurring the 224 x 224 map, whatever the sigma. The
    matrix is the two steps applied to each unit vector, so it is the same operator.
    """
    units = torch.eye(cells, dtype=torch.float64).view(cells, 1, 1, cells)
    rows = F.interpolate(units, size=(1, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = _gaussian_kernel(sigma).double()
        pad = len(kernel) // 2
        rows = F.conv2d(F.pad(rows, (pad, pad, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return rows.view(cells, size).T.float().contiguous()


def anomaly_maps(patch_scores: np.ndarray, grid: tuple[int, int], size: int, sigma: float) -> np.ndarray:
    """``(B, h*w)`` patch scores -> ``(B, size, size)`` maps: bilinear upsampling, Gaussian blur.

    The blur's sigma is in model-input pixels, so it means the same for every frame size.
    """
    maps = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32)).view(-1, *grid)
    down, across = _axis_operator(grid[0], size, sigma), _axis_operator(grid[1], size, sigma)
    return torch.matmul(torch.matmul(down, maps), across.T).numpy()


def image_scores(maps: np.ndarray, mode: ImageScoreMode) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    if mode in ("max", "excess"):  # excess maps arrive centred (class_model.maps_and_scores)
        return flat.max(axis=1)
    count = max(1, flat.shape[1] // 100)  # mean of the top 1% of the map
    return np.partition(flat, -count, axis=1)[:, -count:].mean(axis=1)


@dataclass(frozen=True)
class Normaliser:
    """Piecewise-linear map of raw scores: normal minimum -> 0, normal median -> 0.25,
    threshold -> 0.5, threshold + 2 * (threshold - median) -> 1. Clipped to 0..1."""

    low: float
    median: float
    threshold: float

    @property
    def anchors(self) -> tuple[list[float], list[float]]:
        span = max(self.threshold - self.median, 1e-9)
        low = min(self.low, self.median - 1e-9)
        return [low, self.median, self.threshold, self.threshold + 2 * span], [0.0, 0.25, 0.5, 1.0]

    def __call__(self, raw: np.ndarray | float) -> np.ndarray:
        xs, ys = self.anchors
        return np.asarray(np.interp(raw, xs, ys), dtype=np.float32)


def _component_maxima(values: np.ndarray, components: np.ndarray, count: int) -> np.ndarray:
    maxima = np.full(count, -np.inf, dtype=np.float64)
    np.maximum.at(maxima, components, values.astype(np.float64, copy=False))
    return maxima


def find_regions(
    normalised_map: np.ndarray,
    frame_height: int,
    frame_width: int,
    raw_map: np.ndarray | None = None,
    max_regions: int = 10,
) -> list[Region]:
    """Connected components above 0.5 (the threshold) as frame-pixel boxes, most anomalous first.

    The order comes from ``raw_map`` when given (the normalised map saturates at 1).
    """
    above = normalised_map > 0.5
    if not above.any():
        return []
    labels, count = ndimage.label(above)
    size_y, size_x = normalised_map.shape
    scale_y, scale_x = frame_height / size_y, frame_width / size_x
    # Per-component maxima and areas in one pass over the pixels above the threshold only
    # (ndimage.maximum sorts the whole map's labels once per call: 8% of a loaded scorer's time).
    inside = labels[above] - 1
    peaks = _component_maxima(normalised_map[above], inside, count)
    order_by = peaks if raw_map is None else _component_maxima(raw_map[above], inside, count)
    areas = np.bincount(inside, minlength=count)
    regions = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        y0 = math.floor(box[0].start * scale_y)
        y1 = min(frame_height, math.ceil(box[0].stop * scale_y))
        x0 = math.floor(box[1].start * scale_x)
        x1 = min(frame_width, math.ceil(box[1].stop * scale_x))
        fraction = float(areas[label - 1]) / above.size
        region = Region(x0, y0, max(1, x1 - x0), max(1, y1 - y0), float(peaks[label - 1]), fraction)
        regions.append((float(order_by[label - 1]), region))
    regions.sort(key=lambda item: -item[0])
    return [region for _, region in regions[:max_regions]]


def resize_map(normalised_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float map resized (bilinear) to ``height`` x ``width``; (height, width) order, as numpy shapes."""
    if normalised_map.shape == (height, width):
        return normalised_map.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(normalised_map, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
