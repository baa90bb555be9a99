"""find_regions: connected components above the threshold as frame boxes, ordered by the raw map."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from shared.engine.postprocess import find_regions


def reference_regions(
    normalised: np.ndarray, height: int, width: int, raw: np.ndarray, max_regions: int = 10
) -> list[tuple[int, int, int, int, float, float, float]]:
    """Each component measured on its own, the slow obvious way."""
    labels, count = ndimage.label(normalised > 0.5)
    scale_y, scale_x = height / normalised.shape[0], width / normalised.shape[1]
    found = []
    for label in range(1, count + 1):
        ys, xs = np.nonzero(labels == label)
        x0, y0 = math.floor(xs.min() * scale_x), math.floor(ys.min() * scale_y)
        x1 = min(width, math.ceil((xs.max() + 1) * scale_x))
        y1 = min(height, math.ceil((ys.max() + 1) * scale_y))
        peak = float(normalised[ys, xs].max())
        found.append(
            (x0, y0, max(1, x1 - x0), max(1, y1 - y0), peak, len(xs) / normalised.size, raw[ys, xs].max())
        )
    found.sort(key=lambda r: -r[6])
    return found[:max_regions]


@pytest.mark.parametrize("seed", range(6))
def test_regions_match_each_component_measured_on_its_own(seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = ndimage.gaussian_filter(rng.random((56, 72)).astype(np.float32), 1.5) * 3
    normalised = np.clip(raw - raw.mean() + 0.45, 0, 1).astype(np.float32)
    regions = find_regions(normalised, 480, 640, raw)
    expected = reference_regions(normalised, 480, 640, raw)
    assert len(regions) == len(expected) > 0
    got = [(r.x, r.y, r.width, r.height, r.score, r.area_fraction) for r in regions]
    np.testing.assert_allclose(np.array(got), np.array([e[:6] for e in expected]), rtol=1e-6)


def test_nothing_above_the_threshold_has_no_region() -> None:
    assert find_regions(np.full((8, 8), 0.5, np.float32), 80, 80) == []
