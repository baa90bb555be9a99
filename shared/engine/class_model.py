"""One fitted product class, and the one way a class's patch scores become maps and image scores.

``raw_maps`` is shared by inference (``InspectionModel``) and calibration (``fitting``), so a
threshold is always set on exactly the numbers it is later compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.engine.config import FitConfig
from shared.engine.postprocess import Normaliser, anomaly_maps, image_scores
from shared.engine.scorers.base import PatchScorer, PatchScores, ScoreInput


@dataclass
class ClassModel:
    name: str
    scorer: PatchScorer
    normaliser: Normaliser
    unknown_threshold: float  # routing: cosine distance beyond which an image is 'unknown'
    prototype: np.ndarray  # routing: the class's mean global embedding
    calibration: dict[str, Any]  # how the threshold was set (stored in the manifest)

    @property
    def threshold(self) -> float:
        return self.normaliser.threshold

    def awaiting_confirmation(self, review_until: int | None = None) -> str | None:
        """Why this class's verdicts go to a person, or None: a cold-start (few-shot or zero-shot)
        class until enough confirmed normal images have been fitted in. ``review_until``: how many
        (the scorer's setting); None: as many as the fit was told (the manifest)."""
        cold = self.calibration.get("cold_start")
        if not cold:
            return None
        needed = cold["review_until_confirmed"] if review_until is None else review_until
        if cold["confirmed_normals"] >= needed:
            return None
        return (
            f"cold start: {cold['shots']}-shot model with an approximate threshold; "
            f"{cold['confirmed_normals']} of {needed} confirmed normal images"
        )


def maps_and_scores(patch: PatchScores, config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (model input resolution, raw scale) and raw image scores from patch scores."""
    maps = anomaly_maps(patch.patch, patch.grid, config.input_size, config.blur_sigma)
    if patch.image is not None:
        return maps, patch.image
    if config.image_score == "excess":
        # Each map relative to its own image: a normal part photographed unlike every training image
        # scores high everywhere, a defect only where it is (docs/benchmarks.md, "Few-shot").
        maps = maps - maps.mean(axis=(1, 2), keepdims=True)
    return maps, image_scores(maps, config.image_score)


def raw_maps(scorer: PatchScorer, batch: ScoreInput, config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and raw image scores of ``batch`` against one class's scorer."""
    return maps_and_scores(scorer.score(batch), config)
