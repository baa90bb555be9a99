"""The warm-up batch must give finite scores, else the model is refused (issue 9, finding 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from services.scorer.models import warm_up
from shared.engine.config import Decision, ScoreResult
from shared.errors import ModelRefused


@dataclass
class ModelGiving:
    """The two things ``warm_up`` uses of an InspectionModel, with chosen scores."""

    raw_score: float
    threshold: float = 2.0
    input_size: int = 16

    def score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        score = self.raw_score / self.threshold / 2
        return [
            ScoreResult(
                "washer",
                1.0,
                False,
                self.raw_score,
                score,
                self.threshold,
                Decision.PASS,
                "",
                [],
                image[..., 0],
            )
            for image in images
        ]


@pytest.mark.parametrize("raw", [math.nan, math.inf])
def test_a_model_scoring_a_plain_frame_as_non_finite_is_refused(raw: float) -> None:
    with pytest.raises(ModelRefused, match=r"non-finite values \(class washer: raw_score=") as refused:
        warm_up(ModelGiving(raw))
    assert refused.value.reason == "warm_up_failed"


def test_a_non_finite_threshold_is_refused_and_finite_scores_pass() -> None:
    with pytest.raises(ModelRefused, match="threshold=nan"):
        warm_up(ModelGiving(1.0, threshold=math.nan))
    warm_up(ModelGiving(1.0))
