"""Anomaly maps: bilinear upsampling of the patch grid, then a Gaussian blur with replicated edges.
The engine computes both as one linear operator per axis; it must equal the two steps done directly."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.anomaly_maps import two_step_maps
from shared.engine.postprocess import anomaly_maps


@pytest.mark.parametrize(
    ("grid", "size", "sigma"),
    [
        ((28, 28), 224, 4.0),
        ((28, 28), 224, 8.0),
        ((16, 16), 224, 0.0),
        ((33, 33), 260, 8.0),
        ((14, 20), 96, 2.5),
    ],
)
def test_maps_equal_upsampling_then_blurring(grid: tuple[int, int], size: int, sigma: float) -> None:
    rng = np.random.default_rng(0)
    patch = (rng.gamma(2.0, 3.0, size=(5, grid[0] * grid[1])) * (rng.random((5, 1)) * 10)).astype(np.float32)
    patch[0, :] = 7.0  # a flat map stays flat: the edges are replicated, not zero-padded
    got = anomaly_maps(patch, grid, size, sigma)
    assert got.shape == (5, size, size) and got.dtype == np.float32
    expected = two_step_maps(patch, grid, size, sigma)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
    np.testing.assert_allclose(got[0], 7.0, rtol=1e-6)


def test_a_single_hot_cell_spreads_symmetrically() -> None:
    patch = np.zeros((1, 16 * 16), dtype=np.float32)
    patch[0, 8 * 16 + 8] = 1.0
    amap = anomaly_maps(patch, (16, 16), 128, 4.0)[0]
    assert np.allclose(amap, amap.T, atol=1e-6)
    assert amap.min() >= -1e-7 and amap.sum() == pytest.approx(64.0, rel=1e-3)  # 8 x 8 pixels a cell
