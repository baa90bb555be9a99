"""The scorer's handler on arbitrary records (property-based): every record, whatever its bytes, key,
headers or size, and whatever the model returns for it, yields exactly one verdict or exactly one
dead letter, as encoded records that consumers accept and the topics hold; never an exception.

The handler is what the service runs per batch, without Kafka: ``decode_record`` per record, the
model on the decodable frames, ``build_outcomes``, then ``prepare`` per outcome.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.camera_sim.images import encode_jpeg
from services.scorer.core import DecodedFrame, RawRecord, RecordOutcome, build_outcomes, decode_record
from services.scorer.outputs import prepare
from shared.engine.config import Decision, Region, ScoreResult
from shared.limits import KAFKA_MAX_MESSAGE_BYTES, MAX_HEADERS
from shared.messages.codec import decode, encode
from shared.messages.schemas import DeadLetter, DefectEvent, Verdict
from shared.settings import LatePolicy, NonFinitePolicy
from tests.support.messages import frame

TOPIC = "lineguard.frames"
_GOOD = encode(frame(image=encode_jpeg(np.full((12, 16, 3), 90, np.uint8)), deadline_ms=60_000))
_RAW = encode(
    frame(
        "r-1",
        captured_at=1,
        station_id="st" * 100,
        encoding="raw8",
        image=bytes(range(6)),
        width=3,
        height=2,
        product="washer",
    )
)

_ints = st.integers(-(1 << 63), (1 << 64) - 1)  # what msgpack can carry
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 0.5, 1e308]),
)


def _mutated(data: st.DataObject, base: bytes) -> bytes:
    value = bytearray(base)
    for _ in range(data.draw(st.integers(0, 4))):
        if not value:
            break
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(value))))
    return bytes(value if cut is None else value[:cut])


def _value(data: st.DataObject) -> bytes | None:
    kind = data.draw(st.sampled_from(["good", "raw", "mutated", "bytes", "map", "huge", "none", "fields"]))
    if kind == "good":
        return _GOOD
    if kind == "raw":
        return _RAW
    if kind == "mutated":
        return _mutated(data, data.draw(st.sampled_from([_GOOD, _RAW])))
    if kind == "bytes":
        return data.draw(st.binary(max_size=200))
    if kind == "huge":  # up to past a dead letter's limit, within the topic's
        return b"\xc1" * data.draw(st.sampled_from([1 << 20, (16 << 20) + 5, 17 << 20, (18 << 20) - 4096]))
    if kind == "none":
        return None
    if kind == "fields":  # a real frame with fields changed to arbitrary values
        wire = msgpack.unpackb(_GOOD, raw=False)
        field = data.draw(st.sampled_from(sorted(wire)))
        wire[field] = data.draw(
            st.one_of(st.none(), _ints, numbers, st.text(max_size=300), st.binary(max_size=50))
        )
        return msgpack.packb(wire, use_bin_type=True)
    wire = data.draw(
        st.dictionaries(st.text(max_size=10), st.one_of(_ints, st.text(max_size=20), st.binary(max_size=20)))
    )
    return msgpack.packb(wire, use_bin_type=True)


def _key(data: st.DataObject) -> bytes | None:
    size = data.draw(st.one_of(st.none(), st.integers(0, 64), st.sampled_from([(1 << 20) + 1, 3 << 20])))
    return None if size is None else b"k" * size


def _headers(data: st.DataObject) -> tuple[tuple[str, bytes | None], ...]:
    count = data.draw(st.one_of(st.integers(0, 4), st.sampled_from([MAX_HEADERS, MAX_HEADERS + 1, 400])))
    name = st.one_of(st.sampled_from(["traceparent", "tracestate", "frame-id"]), st.text(max_size=30))
    value = st.one_of(st.none(), st.binary(max_size=60), st.just(b"x" * ((1 << 20) + 1)))
    if count > 4:  # many headers: one strategy draw for all of them keeps examples fast
        return tuple((f"h{i}", data.draw(value) if i == 0 else b"v") for i in range(count))
    return tuple((data.draw(name), data.draw(value)) for _ in range(count))


def _result(data: st.DataObject, decoded: DecodedFrame) -> ScoreResult:
    regions = data.draw(
        st.lists(
            st.builds(
                Region,
                x=st.integers(-5, 20_000),
                y=st.integers(-5, 20_000),
                width=st.integers(-1, 20_000),
                height=st.integers(-1, 20_000),
                score=numbers,
                area_fraction=numbers,
            ),
            max_size=3,
        )
    )
    amap = np.full(
        (data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))), data.draw(numbers), np.float32
    )
    return ScoreResult(
        product_class=data.draw(st.sampled_from(["washer", "unknown", "", "x" * 300])),
        route_confidence=data.draw(numbers),
        hint_mismatch=False,
        raw_score=data.draw(numbers),
        score=data.draw(numbers),
        threshold=data.draw(numbers),
        decision=data.draw(st.sampled_from(list(Decision))),
        reason=data.draw(st.text(max_size=50)),
        regions=regions,
        anomaly_map=amap,
    )


def handle(records: list[RawRecord], results_for: Any, policy: NonFinitePolicy) -> list[RecordOutcome]:
    """What the service does with one batch, minus Kafka."""
    decoded = [decode_record(r, max_image_bytes=8 << 20, max_pixels=4096 * 4096) for r in records]
    good = [d for d in decoded if isinstance(d, DecodedFrame)]
    outcomes = [d for d in decoded if isinstance(d, RecordOutcome)]
    outcomes += build_outcomes(
        good, results_for(good), model_version="v", late_policy=LatePolicy.SCORE, non_finite_policy=policy
    )
    return [prepare(o) for o in outcomes]


def _check(outcome: RecordOutcome) -> None:
    topics = [o.topic for o in outcome.outputs]
    for out in outcome.outputs:
        size = len(out.value) + len(out.key or b"") + sum(len(k) + len(v) for k, v in out.headers)
        assert size < KAFKA_MAX_MESSAGE_BYTES
    if topics == ["dlq"]:
        letter = decode(outcome.outputs[0].value, DeadLetter)
        assert (letter.source_topic, letter.source_offset) == (outcome.record.topic, outcome.record.offset)
        assert letter.original_value_size == len(outcome.record.value or b"")
        return
    assert topics in (["verdicts"], ["verdicts", "defects"]), topics
    verdict = decode(outcome.outputs[0].value, Verdict)
    if outcome.non_finite:
        assert verdict.decision != "pass"
    if len(topics) == 2:
        assert decode(outcome.outputs[1].value, DefectEvent).verdict == verdict


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # huge generated floats overflow float32 maps
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.data())
def test_every_record_gets_exactly_one_verdict_or_one_dead_letter(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 4))
    records = [
        RawRecord(TOPIC, 0, offset, _key(data), _value(data), _headers(data)) for offset in range(count)
    ]
    fails = data.draw(st.booleans())

    def results_for(good: list[DecodedFrame]) -> list[ScoreResult] | None:
        return None if fails else [_result(data, d) for d in good]

    outcomes = handle(records, results_for, data.draw(st.sampled_from(list(NonFinitePolicy))))
    assert sorted(o.record.offset for o in outcomes) == list(range(count))
    for outcome in outcomes:
        _check(outcome)


def test_a_region_beyond_what_the_wire_accepts_costs_one_frame_not_the_batch() -> None:
    records = [RawRecord(TOPIC, 0, i, None, _GOOD, ()) for i in range(2)]
    base = ScoreResult(
        "washer", 0.9, False, 3.0, 0.9, 1.0, Decision.REJECT, "", [], np.zeros((4, 4), np.float32)
    )
    wild = dataclasses.replace(
        base, regions=[Region(x=70_000, y=0, width=5, height=5, score=1, area_fraction=0)]
    )
    outcomes = handle(records, lambda good: [wild, base], NonFinitePolicy.REJECT)
    by_offset = {o.record.offset: [out.topic for out in o.outputs] for o in outcomes}
    assert by_offset == {0: ["dlq"], 1: ["verdicts", "defects"]}
    assert decode(outcomes[0].outputs[0].value, DeadLetter).reason == "output_invalid"
