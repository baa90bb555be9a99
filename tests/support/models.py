"""Real models fitted on synthetic products, for tests and benchmarks (no dataset needed).

The backbone is ``efficientnet_lite0`` with its real weights; ``size`` and ``bank`` keep a test's
model small. ``camera_frames=True`` fits on what the line will see: the camera simulator's JPEGs,
decoded, instead of the rendered pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.engine.config import FitConfig
from shared.synthetic import render_sample

if TYPE_CHECKING:
    from shared.engine.model import InspectionModel

PRODUCTS = ("washer", "fabric")


def fit_synthetic_model(
    out: Path,
    *,
    per_class: int,
    bank: int,
    size: int = 224,
    seed: int = 0,
    products: tuple[str, ...] = PRODUCTS,
    camera_frames: bool = False,
) -> InspectionModel:
    """Fit a model on ``per_class`` images of each product (rendered from ``seed``), save it to
    ``out`` and return it."""
    from services.camera_sim.images import encode_jpeg
    from shared.engine.fitting import fit_model
    from shared.engine.images import decode_image
    from shared.engine.persistence import save_model

    rng = np.random.default_rng(seed)

    def sample(product: str) -> np.ndarray:
        image = render_sample(product, rng, size)[0]
        return decode_image(encode_jpeg(image)) if camera_frames else image

    data = {product: [sample(product) for _ in range(per_class)] for product in products}
    model = fit_model(data, FitConfig(input_size=size, bank_size=bank, seed=seed))
    save_model(model, out)
    return model
