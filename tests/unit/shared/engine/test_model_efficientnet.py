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
