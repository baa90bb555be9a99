"""The engine with the real efficientnet_lite0 ImageNet weights on synthetic products."""

from __future__ import annotations

import numpy as np
import pytest

from shared.engine.config import FitConfig
from shared.engine.fitting import fit_model
from shared.engine.metrics import auroc
from shared.engine.model import InspectionModel
from tests.support.engine import FITTED_CLASSES, synthetic_split, synthetic_test

SIZE = 128


@pytest.fixture(scope="module")
def cnn_model() -> InspectionModel:
    config = FitConfig(backbone="efficientnet_lite0", input_size=SIZE, bank_size=1500)
    return fit_model(synthetic_split(FITTED_CLASSES, 10, SIZE), config)


@pytest.mark.parametrize("product", FITTED_CLASSES)
def test_real_weights_find_and_localise_defects(cnn_model: InspectionModel, product: str) -> None:
    images, labels, masks = synthetic_test(product, SIZE, n_good=6, n_per_defect=3)
    results = cnn_model.score_batch(images)
    assert auroc(labels, np.array([r.raw_score for r in results])) >= 0.95
    hits = []
    for result, mask, label in zip(results, masks, labels, strict=True):
        if label:
            top = result.regions[0] if result.regions else None
            hits.append(top is not None and mask[top.y : top.y + top.height, top.x : top.x + top.width].any())
    assert np.mean(hits) >= 0.8
    assert [r.product_class for r in results] == [product] * len(results)
    defect_decisions = [r.decision for r, label in zip(results, labels, strict=True) if label]
    assert defect_decisions.count("reject") >= 0.7 * len(defect_decisions)


def test_unknown_product_with_real_weights(cnn_model: InspectionModel) -> None:
    images, _, _ = synthetic_test("marble", SIZE, n_good=2, n_per_defect=0)
    assert [r.product_class for r in cnn_model.score_batch(images)] == ["unknown", "unknown"]


def test_regions_are_in_the_frames_coordinates_when_the_image_was_decoded_reduced(
    cnn_model: InspectionModel,
) -> None:
    images, _, _ = synthetic_test("fabric", SIZE, n_good=0, n_per_defect=2)
    full = cnn_model.score_batch(images)
    frame = (SIZE * 4, SIZE * 3)  # the frame was 4x taller, 3x wider than the pixels scored
    reduced = cnn_model.score_batch(images, frame_sizes=[frame] * len(images))
    assert any(result.regions for result in full)
    for whole, scaled in zip(full, reduced, strict=True):
        assert (scaled.raw_score, scaled.decision) == (whole.raw_score, whole.decision)
        assert scaled.anomaly_map.shape == (SIZE, SIZE)  # the map stays at the scored resolution
        assert [(r.x, r.y, r.width, r.height) for r in scaled.regions] == [
            (r.x * 3, r.y * 4, r.width * 3, r.height * 4) for r in whole.regions
        ]
    with pytest.raises(ValueError, match="frame sizes"):
        cnn_model.score_batch(images, frame_sizes=[frame])
