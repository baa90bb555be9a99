from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from shared.engine.metrics import aupro, auroc, f1_max, pixel_auroc, rates_at_threshold


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 2, 300)
        scores = rng.integers(0, 15, 300) + labels * rng.integers(0, 4, 300)  # many ties
        assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auroc(np.zeros(4), np.arange(4)))


def test_pixel_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    masks = [rng.random((12, 9)) > 0.8 for _ in range(3)]
    maps = [mask * 0.5 + rng.random(mask.shape) for mask in masks]
    expected = roc_auc_score(
        np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])
    )
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_on_a_hand_computed_case() -> None:
    # One 10x10 image, two defect regions: A = 4 pixels scored 0.9, B = 2 pixels scored 0.9 and 0.5.
    # Of the 94 normal pixels, 47 score 0.7 and 47 score 0.1.
    mask = np.zeros((10, 10), dtype=np.uint8)
    amap = np.full((10, 10), 0.1)
    mask[0, 0:4] = 1
    amap[0, 0:4] = 0.9
    mask[5, 5:7] = 1
    amap[5, 5], amap[5, 6] = 0.9, 0.5
    normal = np.argwhere(mask == 0)
    for row, col in normal[:47]:
        amap[row, col] = 0.7
    # Thresholds: 0.9 -> FPR 0, PRO (1 + 0.5)/2 = 0.75. 0.7 -> FPR 0.5, PRO 0.75.
    # 0.5 -> FPR 0.5, PRO 1.0. The curve to FPR 0.3: the segment (0, 0.75) -> (0.5, 0.75) cut at 0.3.
    assert aupro([mask], [amap], fpr_limit=0.3) == pytest.approx(0.75 * 0.3 / 0.3)
    # To FPR 1: (0,.75)-(.5,.75) area .375, vertical jump to 1 at .5, then (.5,1)-(1,1) area .5.
    assert aupro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.375 + 0.5)


def test_aupro_ramp_between_thresholds() -> None:
    # A single region of 2 pixels scored 3 and 1; 4 normal pixels scored 4, 2, 0, 0.
    mask = np.array([[1, 1, 0, 0, 0, 0]])
    amap = np.array([[3.0, 1.0, 4.0, 2.0, 0.0, 0.0]])
    # Points (FPR, PRO): (0,0) ->4: (.25,0) ->3: (.25,.5) ->2: (.5,.5) ->1: (.5,1) ->0: (1,1).
    # To FPR .4: rectangle .25..4 at height .5 = .075; divided by .4 = .1875.
    assert aupro([mask], [amap], fpr_limit=0.4) == pytest.approx(0.075 / 0.4)


def test_f1_max_matches_precision_recall_curve() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200) + labels * 0.3
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    assert f1_max(labels, scores) == pytest.approx(f1.max())


def test_rates_at_threshold() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.4])
    frr, escape = rates_at_threshold(labels, scores, 0.5)
    assert frr == pytest.approx(0.25) and escape == pytest.approx(0.5)
