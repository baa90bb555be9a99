"""The codec on arbitrary input (property-based): decoding anything gives a message or a
``MessageError``, and whatever ``encode`` accepts, ``decode`` gives back unchanged."""

from __future__ import annotations

import contextlib
from dataclasses import fields

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import MessageError
from shared.messages.codec import decode, decode_any, encode
from shared.messages.schemas import MESSAGE_TYPES, DeadLetter, Frame, FrameKeys, RegionMsg, Verdict

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ints = st.integers(-(1 << 63), (1 << 64) - 1)
any_float = st.floats(allow_nan=True, allow_infinity=True)
wire_value = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, any_float, st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _decodes_or_refuses(data: bytes) -> None:
    for cls in MESSAGE_TYPES:
        try:
            message = decode(data, cls)
        except MessageError:
            continue
        assert decode(encode(message), cls) == message
    with contextlib.suppress(MessageError):
        decode_any(data)


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_are_refused_with_a_message_error(data: bytes) -> None:
    _decodes_or_refuses(data)


@FAST
@given(st.sampled_from(MESSAGE_TYPES), st.dictionaries(st.text(max_size=16), wire_value, max_size=8))
def test_arbitrary_maps_claiming_a_schema_decode_or_are_refused(cls: type, fields: dict) -> None:
    fields.update({"schema": cls.SCHEMA, "v": cls.VERSION})  # type: ignore[attr-defined]
    _decodes_or_refuses(msgpack.packb(fields, use_bin_type=True))


text = st.text(max_size=300)  # any unicode, including characters of 4 UTF-8 bytes
names = st.text(min_size=1, max_size=300)
frame_keys = {f.name: names for f in fields(FrameKeys)}
# Any number the wire can carry in each of a region's fields, whatever its limits say.
wire_numbers = {"int": ints, "float": any_float}
regions = st.builds(RegionMsg, **{f.name: wire_numbers[f.type] for f in fields(RegionMsg)})


@FAST
@given(
    st.builds(
        Verdict,
        **frame_keys,
        product_class=names,
        route_confidence=any_float,
        decision=st.text(max_size=8) | st.sampled_from(["pass", "reject", "review", "error"]),
        score=any_float,
        raw_score=any_float,
        threshold=any_float,
        regions=st.lists(regions, max_size=3),
        model_version=text,
        captured_at=ints,
        decided_at=ints,
        latency_ms=any_float,
        late=st.booleans(),
        reason=st.text(max_size=5000),
    )
)
def test_what_encode_accepts_decode_gives_back(verdict: Verdict) -> None:
    _round_trips_if_accepted(verdict)


@FAST
@given(
    st.builds(
        Frame,
        **frame_keys,
        captured_at=ints,
        encoding=st.sampled_from(["jpeg", "png", "raw8", "raw-rgb", "gif"]),
        image=st.binary(max_size=64),
        width=st.none() | ints,
        height=st.none() | ints,
        product=st.none() | text,
        deadline_ms=st.none() | ints,
        attributes=st.dictionaries(text, text, max_size=5),
    )
)
def test_frames_round_trip_whenever_encode_accepts_them(frame: Frame) -> None:
    _round_trips_if_accepted(frame)


def _round_trips_if_accepted(message: Verdict | Frame) -> None:
    """Whatever ``encode`` does not refuse, ``decode`` gives back equal."""
    try:
        data = encode(message)
    except MessageError:
        return
    assert decode(data, type(message)) == message


@FAST
@given(
    key=st.none() | st.binary(max_size=64),
    value=st.none() | st.binary(max_size=64),
    headers=st.lists(st.tuples(st.text(max_size=300), st.none() | st.binary(max_size=32)), max_size=6),
    reason=st.text(max_size=300),
    detail=st.text(max_size=70_000),
)
def test_every_dead_letter_for_a_record_encodes_and_round_trips(
    key: bytes | None, value: bytes | None, headers: list, reason: str, detail: str
) -> None:
    class Record:
        topic, partition, offset = "lineguard.frames", 0, 1

    record = Record()
    record.key, record.value, record.headers = key, value, headers  # type: ignore[attr-defined]
    letter = DeadLetter.for_record(record, reason=reason or "r", detail=detail, service="scorer")
    assert decode(encode(letter), DeadLetter) == letter
