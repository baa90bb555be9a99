"""The scorer's core without Kafka: bad records become dead letters, scores become verdicts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.camera_sim.badframes import bad_record_value, oversized_png
from services.camera_sim.core import BAD_KINDS
from services.camera_sim.images import encode_jpeg
from services.scorer.core import (
    DecodedFrame,
    RawRecord,
    RecordOutcome,
    build_outcomes,
    decode_record,
    order_by_record,
)
from shared.engine.config import Region
from shared.messages.anomaly_map import THRESHOLD_LEVEL, decode_anomaly_map, encode_anomaly_map
from shared.messages.codec import decode, encode
from shared.messages.schemas import DeadLetter, DefectEvent, Frame, Verdict
from shared.settings import LatePolicy
from tests.support.messages import frame, score_result

MAX_BYTES = 8 << 20


def _frame(**changes) -> Frame:
    return frame(**{"image": encode_jpeg(np.full((24, 32, 3), 120, np.uint8)), **changes})


def _record(value: bytes, offset: int = 5, partition: int = 1) -> RawRecord:
    return RawRecord("lineguard.frames", partition, offset, b"cam", value, (("h", b"v"),))


def _decode(value: bytes) -> DecodedFrame | RecordOutcome:
    return decode_record(_record(value), max_image_bytes=MAX_BYTES, max_pixels=4096 * 4096)


def test_good_frame_is_decoded_to_rgb() -> None:
    decoded = _decode(encode(_frame()))
    assert isinstance(decoded, DecodedFrame)
    assert decoded.pixels.shape == (24, 32, 3) and decoded.pixels.dtype == np.uint8
    raw = _frame(encoding="raw8", image=bytes(range(12)), width=4, height=3)
    decoded = _decode(encode(raw))
    assert isinstance(decoded, DecodedFrame) and decoded.pixels.shape == (3, 4, 3)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("corrupt_bytes", "corrupt"),
        ("truncated_image", "corrupt"),
        ("wrong_schema", "wrong_schema"),
        ("oversized_dimensions", "too_large"),
        ("undecodable", "malformed"),
    ],
)
def test_every_injected_bad_frame_becomes_a_dead_letter_with_its_reason(kind: str, reason: str) -> None:
    assert kind in BAD_KINDS
    value = bad_record_value(kind, _frame(), np.random.default_rng(1))
    outcome = _decode(value)
    assert isinstance(outcome, RecordOutcome) and outcome.verdict is None
    letter = outcome.dead_letter
    assert letter is not None and letter.reason == reason
    # Kept whole: original bytes, key, headers and position, so nothing is lost.
    assert (letter.original_value, letter.original_key, letter.original_headers) == (
        value,
        b"cam",
        [("h", b"v")],
    )
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("lineguard.frames", 1, 5)
    assert decode(encode(letter), DeadLetter) == letter  # and it fits the dead-letter schema


def test_oversized_png_header_is_refused_before_decoding() -> None:
    outcome = _decode(encode(_frame(image=oversized_png(5000, 5000), encoding="png")))
    assert isinstance(outcome, RecordOutcome) and outcome.dead_letter is not None
    assert outcome.dead_letter.reason == "too_large"


def test_declared_dimensions_must_match_the_image() -> None:
    outcome = _decode(encode(_frame(width=10, height=10)))
    assert isinstance(outcome, RecordOutcome) and outcome.dead_letter is not None
    assert outcome.dead_letter.reason == "bad_dimensions"


def test_scorer_pixel_limit_applies_to_declared_dimensions() -> None:
    record = _record(encode(_frame(width=32, height=24)))
    outcome = decode_record(record, max_image_bytes=MAX_BYTES, max_pixels=100)
    assert isinstance(outcome, RecordOutcome) and outcome.dead_letter is not None
    assert outcome.dead_letter.reason == "too_large"


def _decoded(frame: Frame, offset: int = 0) -> DecodedFrame:
    decoded = decode_record(_record(encode(frame), offset), max_image_bytes=MAX_BYTES)
    assert isinstance(decoded, DecodedFrame)
    return decoded


def test_verdicts_carry_the_score_and_only_reject_and_review_make_defect_events() -> None:
    frames = [_decoded(_frame(frame_id=f"f{i}"), i) for i in range(3)]
    region = Region(x=3, y=4, width=5, height=6, score=0.9, area_fraction=0.04)
    results = [
        score_result("pass"),
        score_result("reject", regions=[region], score=0.8),
        score_result("review", product_class="unknown", reason="unknown product"),
    ]
    now = time.time_ns()
    outcomes = build_outcomes(frames, results, model_version="v1", late_policy=LatePolicy.REJECT, now_ns=now)
    verdicts = [o.verdict for o in outcomes]
    assert [v.decision for v in verdicts] == ["pass", "reject", "review"]
    assert [o.defect is not None for o in outcomes] == [False, True, True]
    assert verdicts[1].regions[0].x == 3 and verdicts[1].score == 0.8
    assert verdicts[2].product_class == "unknown" and verdicts[2].reason == "unknown product"
    assert all(v.model_version == "v1" and not v.late and v.decided_at == now for v in verdicts)
    assert decode(encode(verdicts[0]), Verdict) == verdicts[0]
    event = outcomes[1].defect
    assert event is not None and (event.width, event.height) == (32, 24)
    assert event.image == frames[1].frame.image
    assert decode(encode(event), DefectEvent) == event


def test_the_defect_event_map_is_the_wire_encoding_and_nan_is_not_hidden() -> None:
    amap = np.full((12, 16), 0.5, np.float32)
    amap[0, 0] = np.nan  # a model fault must show as anomalous (255), never as a clean 0
    (outcome,) = build_outcomes(
        [_decoded(_frame())],
        [score_result("reject", anomaly_map=amap)],
        model_version="v",
        late_policy=LatePolicy.REJECT,
    )
    assert outcome.defect is not None
    assert outcome.defect.anomaly_map_png == encode_anomaly_map(amap, 16, 12)  # as scored: the smaller
    levels = decode_anomaly_map(outcome.defect.anomaly_map_png)
    assert levels.shape == (12, 16) and levels[0, 0] == 255 and levels[11, 15] == THRESHOLD_LEVEL


def test_a_large_frame_is_decoded_for_the_model_and_its_event_keeps_the_frames_size_and_scored_map() -> None:
    camera = np.full((1200, 1600, 3), 120, np.uint8)
    camera[500:560, 700:780] = 20
    large = _frame(image=encode_jpeg(camera), width=1600, height=1200)
    decoded = decode_record(_record(encode(large)), max_image_bytes=MAX_BYTES, reduce_to=224)
    assert isinstance(decoded, DecodedFrame)
    assert decoded.pixels.shape == (300, 400, 3)  # 1/4 scale: both sides still >= 224
    assert decoded.frame_size == (1200, 1600)
    amap = np.zeros((300, 400), np.float32)
    amap[125:140, 175:195] = 0.9
    region = Region(x=700, y=500, width=80, height=60, score=0.9, area_fraction=0.0025)
    (outcome,) = build_outcomes(
        [decoded],
        [score_result("reject", anomaly_map=amap, regions=[region])],
        model_version="v",
        late_policy=LatePolicy.REJECT,
    )
    assert outcome.defect is not None and (outcome.defect.width, outcome.defect.height) == (1600, 1200)
    assert outcome.defect.image == large.image  # the explainer gets the bytes the camera sent
    # The map stays at the resolution it was scored at: scaled up to 1600 x 1200 it would say nothing
    # more, and a camera-sized PNG costs the verdict path hundreds of ms; readers scale it.
    assert outcome.defect.anomaly_map_png == encode_anomaly_map(amap, 400, 300)
    assert outcome.verdict is not None and outcome.verdict.regions[0].x == 700


def test_a_map_larger_than_its_frame_is_sent_at_the_frames_size() -> None:
    amap = np.full((48, 64), 0.7, np.float32)  # scored larger than the camera's 32 x 24 frame
    (outcome,) = build_outcomes(
        [_decoded(_frame())], [score_result("reject", anomaly_map=amap)], model_version="v",
        late_policy=LatePolicy.REJECT,
    )  # fmt: skip
    assert outcome.defect is not None
    assert decode_anomaly_map(outcome.defect.anomaly_map_png).shape == (24, 32)


@pytest.mark.parametrize(
    ("policy", "model_decision", "expected"),
    [
        (LatePolicy.REJECT, "pass", "reject"),
        (LatePolicy.REVIEW, "pass", "review"),
        (LatePolicy.SCORE, "pass", "pass"),
        (LatePolicy.REJECT, "reject", "reject"),
    ],
)
def test_late_frame_gets_the_fail_safe_decision_and_is_marked(
    policy: LatePolicy, model_decision: str, expected: str
) -> None:
    captured = time.time_ns() - 500_000_000
    late = _decoded(_frame(captured_at=captured, deadline_ms=100))
    on_time = _decoded(_frame(captured_at=captured, deadline_ms=10_000), 1)
    outcomes = build_outcomes(
        [late, on_time],
        [score_result(model_decision), score_result(model_decision)],
        model_version="v",
        late_policy=policy,
    )
    verdict = outcomes[0].verdict
    assert verdict is not None and verdict.late and verdict.decision == expected
    assert "late by" in verdict.reason and "deadline 100 ms" in verdict.reason
    assert f"model said {model_decision}" in verdict.reason
    assert outcomes[1].verdict is not None and not outcomes[1].verdict.late
    assert outcomes[1].verdict.decision == model_decision
    assert verdict.latency_ms >= 500


def test_model_failure_gives_error_verdicts_not_silence() -> None:
    frames = [_decoded(_frame(frame_id="a", product="washer"))]
    (outcome,) = build_outcomes(
        frames, None, model_version="v", late_policy=LatePolicy.REJECT, error="model failed: X"
    )
    assert outcome.verdict is not None
    assert (outcome.verdict.decision, outcome.verdict.product_class, outcome.verdict.reason) == (
        "error",
        "washer",
        "model failed: X",
    )
    assert outcome.defect is None


def test_results_must_match_frames() -> None:
    with pytest.raises(ValueError):
        build_outcomes([_decoded(_frame())], [], model_version="v", late_policy=LatePolicy.REJECT)


def test_outcomes_are_ordered_by_partition_and_offset() -> None:
    outcomes = [RecordOutcome(_record(b"", offset=o, partition=p)) for p, o in [(1, 9), (0, 3), (1, 2)]]
    assert [(o.record.partition, o.record.offset) for o in order_by_record(outcomes)] == [
        (0, 3),
        (1, 2),
        (1, 9),
    ]
