"""The engine -> wire conversions: ``RegionMsg.from_region`` and ``Verdict.for_frame``."""

from __future__ import annotations

import math

import numpy as np

from shared.engine.config import UNKNOWN, Decision, Region, ScoreResult
from shared.messages.codec import decode, encode
from shared.messages.schemas import Frame, RegionMsg, Verdict
from tests.support.messages import frame

FRAME = frame("f-1", captured_at=1_000_000_000, image=b"\xff\xd8")


def test_a_region_goes_on_the_wire_at_least_one_pixel_wide_with_finite_bounded_numbers() -> None:
    region = Region(x=3, y=4, width=0, height=5, score=math.nan, area_fraction=1.5)
    assert RegionMsg.from_region(region) == RegionMsg(3, 4, 1, 5, 0.0, 1.0)


def test_a_scored_verdict_carries_the_frame_identity_and_the_result() -> None:
    result = ScoreResult(
        product_class="",
        route_confidence=1.7,
        hint_mismatch=False,
        raw_score=math.inf,
        score=0.8,
        threshold=2.0,
        decision=Decision.REJECT,
        reason="",
        regions=[Region(1, 2, 3, 4, 0.9, 0.01)],
        anomaly_map=np.zeros((2, 2), np.float32),
    )
    verdict = Verdict.for_frame(
        FRAME,
        result,
        decision=Decision.REJECT,
        reason="r" * 5000,
        model_version="m",
        decided_at=3_000_000_000,
        late=True,
    )
    assert (verdict.frame_id, verdict.line_id, verdict.station_id, verdict.camera_id) == (
        "f-1",
        "line-1",
        "st-1",
        "cam-1",
    )
    assert (verdict.product_class, verdict.route_confidence, verdict.raw_score) == (UNKNOWN, 1.0, 0.0)
    assert verdict.regions == [RegionMsg(1, 2, 3, 4, 0.9, 0.01)]
    assert (verdict.latency_ms, verdict.late, len(verdict.reason)) == (2000.0, True, 4000)
    assert decode(encode(verdict), Verdict) == verdict


def test_an_unscored_verdict_names_the_hinted_class_and_carries_no_scores() -> None:
    hinted = Verdict.for_frame(
        Frame(**{**FRAME.__dict__, "product": "washer"}),
        None,
        decision=Decision.ERROR,
        reason="model failed",
        model_version="",
        decided_at=FRAME.captured_at,
        late=False,
    )
    assert (hinted.product_class, hinted.decision, hinted.score, hinted.regions) == (
        "washer",
        "error",
        0.0,
        [],
    )
    unhinted = Verdict.for_frame(
        FRAME, None, decision=Decision.ERROR, reason="", model_version="", decided_at=0, late=False
    )
    assert unhinted.product_class == UNKNOWN and unhinted.latency_ms == 0.0
