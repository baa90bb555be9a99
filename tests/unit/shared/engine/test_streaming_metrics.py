"""Streamed pixel metrics (fixed-bin histograms) against the exact ones, and the operating-point
metrics of the evaluation report."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_curve

from shared.engine.metrics import (
    PixelHistograms,
    aupro,
    binomial_interval,
    pixel_auroc,
    sortable_bins,
    tpr_at_fpr,
)


def blob_images(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> tuple[list, list]:
    """Smooth random maps, raised inside a few random blobs (the defect masks); every third image
    is defect-free."""
    masks, maps = [], []
    for i in range(n):
        amap = ndimage.gaussian_filter(rng.normal(size=shape), 2.0).astype(np.float32)
        mask = np.zeros(shape, dtype=bool)
        if i % 3:
            yy, xx = np.mgrid[: shape[0], : shape[1]]
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
                r = rng.uniform(2, 7)
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            amap = amap + mask * np.float32(rng.uniform(0.05, 0.4))
        masks.append(mask)
        maps.append(amap)
    return masks, maps


def streamed(masks: list, maps: list, bits: int = 20) -> PixelHistograms:
    histograms = PixelHistograms(bits)
    for mask, amap in zip(masks, maps, strict=True):
        histograms.add(mask, amap)
    return histograms


def test_bins_keep_the_order_of_every_float() -> None:
    rng = np.random.default_rng(0)
    values = np.sort(
        np.r_[rng.normal(0, 1e3, 5000), rng.normal(0, 1e-3, 5000), -np.inf, np.inf, 0.0, -1e30, 1e30]
    ).astype(np.float32)
    for bits in (12, 16, 20):
        bins = sortable_bins(values, bits)
        assert (np.diff(bins) >= 0).all()
        assert bins.min() >= 0 and bins.max() < 1 << bits
    # 20 bits tell apart values 0.1 % apart at any magnitude and sign.
    for scale in (1e-6, 1.0, 1e6, -1.0):
        a = np.float32(scale)
        assert (
            sortable_bins(np.array([a, a * np.float32(1.001)]), 20)[0]
            != sortable_bins(np.array([a * np.float32(1.001)]), 20)[0]
        )


def test_scores_in_distinct_bins_give_exactly_the_exact_values() -> None:
    """Integer scores each get a bin of their own: ties and curve steps are then the same as the
    exact computation's, so both metrics must agree to rounding."""
    rng = np.random.default_rng(1)
    masks, maps = blob_images(rng, 9, (40, 30))
    integer_maps = [np.round(amap * 50).astype(np.float32) for amap in maps]  # many ties
    histograms = streamed(masks, integer_maps)
    assert histograms.auroc() == pytest.approx(pixel_auroc(masks, integer_maps), abs=1e-12)
    for limit in (0.05, 0.3, 1.0):
        assert histograms.aupro(limit) == pytest.approx(aupro(masks, integer_maps, limit), abs=1e-12)
    assert histograms.n_images == 9


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_continuous_scores_are_within_a_hair_of_the_exact_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = blob_images(rng, 12, (64, 48))
    maps = [amap * np.float32(10.0**seed) - np.float32(3.0) for amap in maps]  # any scale and sign
    exact_auroc, exact_aupro = pixel_auroc(masks, maps), aupro(masks, maps)
    fine = streamed(masks, maps, 20)
    assert abs(fine.auroc() - exact_auroc) < 2e-4
    assert abs(fine.aupro() - exact_aupro) < 2e-4
    # The bins are what makes it close: 8 bits (no mantissa left) are visibly off.
    coarse = streamed(masks, maps, 8)
    assert abs(coarse.auroc() - exact_auroc) > 10 * abs(fine.auroc() - exact_auroc)


def test_streamed_metrics_without_defect_pixels_or_normals_are_undefined() -> None:
    histograms = PixelHistograms(16)
    histograms.add(np.zeros((4, 4)), np.ones((4, 4), dtype=np.float32))
    assert np.isnan(histograms.auroc()) and np.isnan(histograms.aupro())
    with pytest.raises(ValueError, match="shape"):
        histograms.add(np.zeros((4, 5)), np.ones((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="bits"):
        PixelHistograms(30)


def test_tpr_at_fpr_matches_the_roc_curve() -> None:
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(1000, bool), np.ones(400, bool)]
    scores = np.r_[rng.normal(0, 1, 1000), rng.normal(1.5, 1, 400)]
    fpr, tpr, _ = roc_curve(labels, scores)
    for target in (0.001, 0.01, 0.05):
        expected = tpr[fpr <= target].max()  # the best point that rejects at most target normals
        assert tpr_at_fpr(labels, scores, target) == pytest.approx(expected)
    # 1000 normals: 0.1 % lets exactly one normal lie above the threshold.
    threshold = np.sort(scores[:1000])[-2]
    assert tpr_at_fpr(labels, scores, 0.001) == pytest.approx((scores[1000:] > threshold).mean())
    assert np.isnan(tpr_at_fpr(np.ones(3, bool), np.arange(3.0), 0.01))


def test_binomial_interval_covers_the_rate() -> None:
    low, high = binomial_interval(2, 381)
    assert low < 2 / 381 < high
    assert low == pytest.approx(0.000636, abs=2e-5) and high == pytest.approx(0.01884, abs=2e-4)
    assert binomial_interval(0, 10)[0] == 0.0 and binomial_interval(10, 10)[1] == 1.0
