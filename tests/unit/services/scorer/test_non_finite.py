"""Non-finite never passes (issue 9, finding 4): a NaN or infinite raw score, threshold or normalised
score gives the configured fail-safe decision with a reason, never ``pass``."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from services.camera_sim.images import encode_jpeg
from services.scorer.core import DecodedFrame, RawRecord, build_outcomes, decode_record
from shared.messages.codec import decode, encode
from shared.messages.schemas import DefectEvent, Verdict
from shared.settings import LatePolicy, NonFinitePolicy
from tests.support.messages import frame, score_result


def _decoded(**changes: object) -> DecodedFrame:
    source = frame(image=encode_jpeg(np.full((24, 32, 3), 120, np.uint8)), **changes)
    decoded = decode_record(RawRecord("frames", 0, 0, None, encode(source), ()), max_image_bytes=8 << 20)
    assert isinstance(decoded, DecodedFrame)
    return decoded


@pytest.mark.parametrize("name", ["raw_score", "score", "threshold"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_gives_the_default_fail_safe_reject(name: str, value: float) -> None:
    result = score_result(**{name: value})  # the engine compared NaN >= 0.5, got False, and said "pass"
    (outcome,) = build_outcomes([_decoded()], [result], model_version="v", late_policy=LatePolicy.SCORE)
    verdict = outcome.verdict
    assert verdict is not None and verdict.decision == "reject"
    assert f"non-finite {name}=" in verdict.reason and "model said pass" in verdict.reason
    assert outcome.non_finite
    assert all(math.isfinite(x) for x in (verdict.score, verdict.raw_score, verdict.threshold))
    assert decode(encode(verdict), Verdict) == verdict
    assert outcome.defect is not None and decode(encode(outcome.defect), DefectEvent) == outcome.defect


def test_the_fail_safe_decision_is_a_setting() -> None:
    (outcome,) = build_outcomes(
        [_decoded()],
        [score_result(score=math.nan)],
        model_version="v",
        late_policy=LatePolicy.SCORE,
        non_finite_policy=NonFinitePolicy.REVIEW,
    )
    assert outcome.verdict is not None and outcome.verdict.decision == "review"


def test_finite_numbers_are_left_alone() -> None:
    result = score_result()
    (outcome,) = build_outcomes([_decoded()], [result], model_version="v", late_policy=LatePolicy.SCORE)
    assert outcome.verdict is not None and outcome.verdict.decision == "pass" and not outcome.non_finite


def test_a_late_frame_with_a_nan_score_is_still_not_passed() -> None:
    late = _decoded(captured_at=time.time_ns() - 10**9, deadline_ms=10)
    (outcome,) = build_outcomes(
        [late], [score_result(raw_score=math.nan)], model_version="v", late_policy=LatePolicy.SCORE
    )
    assert outcome.verdict is not None and outcome.verdict.decision == "reject" and outcome.verdict.late
