"""The accuracy table's own pieces: streamed pixel curves equal the exact metrics, the labelled
choice is deterministic and per type, and TPR at a false-positive rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.accuracy_table import PixelCurves, labelled_choice, table, tpr_at_fpr
from shared.engine.dataset import TestSample
from shared.engine.metrics import aupro, pixel_auroc


def test_streamed_pixel_curves_equal_the_exact_metrics() -> None:
    rng = np.random.default_rng(0)
    masks, maps = [], []
    for i in range(6):
        mask = np.zeros((40, 50), dtype=bool)
        if i % 2:
            mask[5 + i : 15 + i, 10:20 + 2 * i] = True
            mask[30:33, 40:45] = True
        amap = rng.random((40, 50)).astype(np.float32) + 0.8 * mask
        masks.append(mask)
        maps.append(amap)
    curves = PixelCurves()
    for mask, amap in zip(masks, maps, strict=True):
        curves.add(mask, amap)
    assert curves.auroc() == pytest.approx(pixel_auroc(masks, maps), abs=2e-4)
    assert curves.aupro() == pytest.approx(aupro(masks, maps), abs=2e-3)


def test_negative_and_positive_scores_keep_their_order() -> None:
    curves = PixelCurves()
    mask = np.array([[False, False, True, True]])
    curves.add(mask, np.array([[-3.0, -0.5, 0.25, 7.0]], dtype=np.float32))
    assert curves.auroc() == pytest.approx(1.0)


def test_the_labelled_choice_is_per_type_and_deterministic() -> None:
    kinds = ("a", "b", "good")
    test = [TestSample(Path(f"{kind}/{i:03d}.png"), kind, None) for kind in kinds for i in range(20)]
    first = labelled_choice(test, 3)
    assert [s.defect_type for s in first] == ["a"] * 3 + ["b"] * 3
    assert first == labelled_choice(list(reversed(test)), 3)
    assert labelled_choice(test, 3, seed=1) != first


def test_tpr_at_fpr_uses_the_normals_own_quantile() -> None:
    labels = np.array([False] * 100 + [True] * 4)
    scores = np.r_[np.arange(100.0), [98.5, 99.5, 50.0, 200.0]]
    # 1 % of 100 normals: one may score above the threshold, so it sits at the second highest (98)
    assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(0.75)
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(0.5)  # above the highest normal (99)


def test_a_row_that_could_not_run_says_why() -> None:
    rows = [{"scorer": "knn flat", "labelled_per_type": 0, "backbone": "efficientnet_lite2"}]
    rows[0]["error"] = "unknown"
    assert "| lite2 | knn flat | 0 | unknown |" in table(rows)
