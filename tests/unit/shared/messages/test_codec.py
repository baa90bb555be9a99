"""The message codec: round trips, and a precise MessageError for every way a message can be bad."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import pytest

from shared import limits
from shared.engine.config import Region
from shared.messages import codec
from shared.messages.codec import MessageError, decode, decode_any, encode, schema_of
from shared.messages.schemas import (
    DeadLetter,
    DefectEvent,
    Frame,
    FrameRef,
    ModelAnnouncement,
    RegionMsg,
    Verdict,
)
from tests.support import messages as build
from tests.support.messages import announcement, dead_letter

PNG = codec.PNG_SIGNATURE + b"rest-of-png"


def frame(**changes: Any) -> Frame:
    optional = {"product": "washer", "deadline_ms": 250, "attributes": {"lot": "A1"}}
    return build.frame(**{"captured_at": build.T0, **optional, **changes})


def verdict(**changes: Any) -> Verdict:
    base = build.verdict(
        decision="reject", score=0.81, regions=[Region(3, 4, 10, 12, 0.9, 0.01)], captured_at=build.T0
    )
    return dataclasses.replace(base, **changes)


def defect(**changes: Any) -> DefectEvent:
    return dataclasses.replace(build.defect_event(captured_at=build.T0), **changes)


def wire(message: Any, **changes: Any) -> dict[str, Any]:
    """The message's wire map, with fields changed (``DROP`` removes one)."""
    body = msgpack.unpackb(encode(message), raw=False)
    for key, value in changes.items():
        if value is DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


DROP = object()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def reason_of(data: bytes, expected: type = Frame) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode(data, expected)
    return info.value


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        frame(),
        frame(
            encoding="raw8", image=bytes(12), width=4, height=3, product=None, deadline_ms=None, attributes={}
        ),
        frame(encoding="raw-rgb", image=bytes(2 * 2 * 3), width=2, height=2),
        frame(encoding="png", image=PNG, width=640, height=480),
        verdict(),
        verdict(decision="error", regions=[], model_version="", late=True, reason="deadline passed"),
        defect(),
        dead_letter(),
        dead_letter(key=None, headers=()),
        announcement(),
        announcement(key_id="0123456789abcdef", signature=bytes(range(64))),
    ],
    ids=lambda m: type(m).__name__,
)
def test_round_trip(message: Any) -> None:
    data = encode(message)
    assert decode(data, type(message)) == message
    assert decode_any(data) == message
    assert schema_of(data) == (type(message).SCHEMA, type(message).VERSION)


def test_every_message_carries_schema_and_version() -> None:
    body = msgpack.unpackb(encode(verdict()), raw=False)
    assert body["schema"] == "lineguard.Verdict"
    assert body["v"] == 1


def test_decoded_types_are_the_declared_ones() -> None:
    # An integral float on the wire comes back as float; arrays come back as the declared types.
    data = pack(wire(verdict(), score=1, regions=[wire_region()]))
    got = decode(data, Verdict)
    assert isinstance(got.score, float)
    assert isinstance(got.regions[0], RegionMsg)
    with_null = dead_letter(headers=(("traceparent", b"00-abc-def-01"), ("no-value", None)))
    headers = decode(encode(with_null), DeadLetter).original_headers
    assert headers == [("traceparent", b"00-abc-def-01"), ("no-value", None)]
    assert isinstance(headers[0], tuple)


def wire_region(**changes: Any) -> dict[str, Any]:
    region = {"x": 1, "y": 2, "width": 3, "height": 4, "score": 0.5, "area_fraction": 0.1}
    region.update(changes)
    return region


# ---- malformed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        pack(wire(frame()))[:-3],  # truncated
        pack(wire(frame())) + b"\x00",  # trailing bytes
        pack([1, 2, 3]),  # not a map
        pack("frame"),
        b"\x81\xa6schema\xa3\xff\xfe\xfd",  # invalid UTF-8 in a string
        pack({1: "int key"}),
        pack({**wire(frame()), "v": "1"}),
        pack({**wire(frame()), "v": True}),
        pack({**wire(frame()), "v": None}),
    ],
    ids=[
        "empty",
        "not-msgpack",
        "truncated",
        "trailing",
        "array",
        "string",
        "bad-utf8",
        "int-key",
        "str-version",
        "bool-version",
        "no-version",
    ],
)
def test_malformed(data: bytes) -> None:
    assert reason_of(data).reason == "malformed"


def test_not_bytes_is_malformed() -> None:
    with pytest.raises(MessageError) as info:
        decode("a string", Frame)  # type: ignore[arg-type]
    assert info.value.reason == "malformed"


# ---- schema and version -----------------------------------------------------------------------


def test_wrong_schema() -> None:
    error = reason_of(encode(verdict()), Frame)
    assert error.reason == "wrong_schema"
    assert "lineguard.Frame" in str(error) and "lineguard.Verdict" in str(error)
    assert reason_of(pack(wire(frame(), schema=DROP))).reason == "wrong_schema"
    assert reason_of(pack(wire(frame(), schema=["lineguard.Frame"]))).reason == "wrong_schema"


def test_decode_any_refuses_unknown_schemas() -> None:
    for schema in ("lineguard.Nope", None, 7, ["x"]):
        with pytest.raises(MessageError) as info:
            decode_any(pack(wire(frame(), schema=schema)))
        assert info.value.reason == "wrong_schema"


def test_schema_of_needs_a_name_and_version() -> None:
    with pytest.raises(MessageError) as info:
        schema_of(pack({"v": 1}))
    assert info.value.reason == "wrong_schema"
    with pytest.raises(MessageError) as info:
        schema_of(pack({"schema": "lineguard.Frame"}))
    assert info.value.reason == "malformed"


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(MessageError) as info:
        encode(RegionMsg(1, 2, 3, 4, 0.5, 0.1))  # type: ignore[arg-type]
    assert info.value.reason == "wrong_schema"
    with pytest.raises(TypeError):
        decode(encode(frame()), RegionMsg)


@pytest.mark.parametrize("version", [0, 3, 99, -1])
def test_unsupported_version(version: int) -> None:
    error = reason_of(pack(wire(frame(), v=version)))
    assert error.reason == "unsupported_version"
    assert str(version) in str(error)


# ---- size limits ------------------------------------------------------------------------------


def test_message_over_the_size_limit_is_refused_before_unpacking() -> None:
    data = b"\x00" * (limits.MAX_MESSAGE_BYTES + 1)
    assert reason_of(data).reason == "too_large"
    with pytest.raises(MessageError) as info:
        decode_any(b"\x00" * (limits.DEAD_LETTER_MAX_BYTES + 1))
    assert info.value.reason == "too_large"


def test_decode_any_applies_the_limit_of_the_claimed_type() -> None:
    big = pack(wire(frame(), image=b"x" * (limits.MAX_MESSAGE_BYTES + 10)))
    with pytest.raises(MessageError) as info:
        decode_any(big)
    assert info.value.reason == "too_large"


def test_forged_msgpack_lengths_hit_msgpack_limits() -> None:
    too_many = pack(wire(verdict(), regions=[wire_region()] * (codec._MSGPACK_LIMITS["max_array_len"] + 1)))
    assert reason_of(too_many, Verdict).reason == "too_large"
    long_text = pack(wire(frame(), frame_id="x" * (codec._MSGPACK_LIMITS["max_str_len"] + 1)))
    assert reason_of(long_text).reason == "too_large"
    # A binary header claiming 4 GiB with 3 bytes behind it: refused, nothing allocated.
    forged = b"\x81\xa5image\xc6\xff\xff\xff\xff" + b"abc"
    assert reason_of(forged).reason in ("too_large", "malformed")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image", b"x" * (limits.MAX_IMAGE_BYTES + 1)),
        ("frame_id", "x" * (limits.ID_MAX + 1)),
        ("attributes", {f"k{i}": "v" for i in range(limits.MAX_ATTRIBUTES + 1)}),
        ("attributes", {"k": "v" * (limits.TEXT_MAX + 1)}),
    ],
    ids=["image", "frame_id", "attribute-count", "attribute-value"],
)
def test_field_over_its_limit(field: str, value: Any) -> None:
    error = reason_of(pack(wire(frame(), **{field: value})))
    assert error.reason == "too_large"
    assert error.field is not None and error.field.startswith(field)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    error = reason_of(pack(wire(frame(), width=8192, height=8192)))
    assert error.reason == "too_large"


def test_encode_refuses_an_oversized_message() -> None:
    half = limits.MAX_IMAGE_BYTES
    with pytest.raises(MessageError) as info:
        encode(defect(image=b"x" * half, anomaly_map_png=PNG + b"x" * (half - len(PNG))))
    assert info.value.reason == "too_large"


def test_regions_over_the_limit() -> None:
    # Whichever layer sees it first (msgpack's array bound or the field's max_items), it is too large.
    data = pack(wire(verdict(), regions=[wire_region()] * (limits.MAX_REGIONS + 1)))
    assert reason_of(data, Verdict).reason == "too_large"


# ---- fields -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"frame_id": DROP}, "frame_id"),
        ({"colour": "red"}, "colour"),
        ({"captured_at": "yesterday"}, "captured_at"),
        ({"captured_at": True}, "captured_at"),
        ({"captured_at": 1.5}, "captured_at"),
        ({"captured_at": -1}, "captured_at"),
        ({"captured_at": 1 << 63}, "captured_at"),
        ({"image": "text, not bytes"}, "image"),
        ({"image": b""}, "image"),
        ({"camera_id": b"cam-1"}, "camera_id"),
        ({"camera_id": None}, "camera_id"),
        ({"camera_id": ""}, "camera_id"),
        ({"encoding": "gif"}, "encoding"),
        ({"width": 0, "height": 10}, "width"),
        ({"width": 20000, "height": 10}, "width"),
        ({"width": 10}, "width"),  # without height
        ({"deadline_ms": -5}, "deadline_ms"),
        ({"product": ""}, "product"),
        ({"attributes": {"k": 1}}, "attributes"),
        ({"attributes": {b"k": "v"}}, "attributes"),
        ({"attributes": ["k", "v"]}, "attributes"),
        ({"encoding": "raw8"}, "width"),  # raw needs dimensions
        ({"encoding": "raw8", "width": 4, "height": 3}, "image"),  # 12 bytes needed
        ({"encoding": "raw-rgb", "width": 2, "height": 2, "image": bytes(4)}, "image"),
    ],
)
def test_invalid_frame_fields(changes: dict[str, Any], field: str) -> None:
    error = reason_of(pack(wire(frame(), **changes)))
    assert error.reason == "invalid_field", error
    assert error.field is not None and error.field.startswith(field)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"decision": "maybe"}, "decision"),
        ({"route_confidence": 1.5}, "route_confidence"),
        ({"score": math.nan}, "score"),
        ({"score": math.inf}, "score"),
        ({"score": "0.5"}, "score"),
        ({"late": 1}, "late"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"regions": "none"}, "regions"),
        ({"regions": [wire_region(x="3")]}, "regions[0].x"),
        ({"regions": [wire_region(area_fraction=2.0)]}, "regions[0].area_fraction"),
        ({"regions": [wire_region(extra=1)]}, "regions[0].extra"),
        ({"regions": [{"x": 1}]}, "regions[0].y"),
        ({"regions": [[1, 2, 3, 4, 0.5, 0.1]]}, "regions[0]"),
    ],
)
def test_invalid_verdict_fields(changes: dict[str, Any], field: str) -> None:
    error = reason_of(pack(wire(verdict(), **changes)), Verdict)
    assert error.reason == "invalid_field", error
    assert error.field == field


def test_invalid_nested_and_cross_field_rules() -> None:
    bad_verdict = {**wire(verdict()), "decision": "nope"}
    for key in ("schema", "v"):
        bad_verdict.pop(key)
    error = reason_of(pack(wire(defect(), verdict=bad_verdict)), DefectEvent)
    assert (error.reason, error.field) == ("invalid_field", "verdict.decision")
    error = reason_of(pack(wire(defect(), anomaly_map_png=b"GIF89a....")), DefectEvent)
    assert (error.reason, error.field) == ("invalid_field", "anomaly_map_png")
    error = reason_of(pack(wire(defect(), encoding="raw8", width=2, height=2, image=b"123")), DefectEvent)
    assert (error.reason, error.field) == ("invalid_field", "image")
    error = reason_of(pack(wire(announcement(), sha256="AB" * 32)), ModelAnnouncement)
    assert (error.reason, error.field) == ("invalid_field", "sha256")
    error = reason_of(pack(wire(announcement(), sha256="ab" * 31)), ModelAnnouncement)
    assert (error.reason, error.field) == ("invalid_field", "sha256")
    error = reason_of(pack(wire(announcement(), signature=bytes(65))), ModelAnnouncement)
    assert (error.reason, error.field) == ("too_large", "signature")
    error = reason_of(pack(wire(announcement(), key_id="k" * 17)), ModelAnnouncement)
    assert (error.reason, error.field) == ("too_large", "key_id")


def test_a_version_1_model_announcement_is_refused_by_this_build() -> None:
    # Version 2 added the signature: an announcement from before it is read by no scorer of this build.
    old = wire(announcement(), v=1, key_id=DROP, signature=DROP)
    assert reason_of(pack(old), ModelAnnouncement).reason == "unsupported_version"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"original_headers": [["traceparent"]]}, "original_headers[0]"),
        ({"original_headers": [["traceparent", "text"]]}, "original_headers[0][1]"),
        ({"original_headers": [[1, b"v"]]}, "original_headers[0][0]"),
        ({"original_key": "text"}, "original_key"),
        ({"source_partition": -1}, "source_partition"),
        ({"original_value": None}, "original_value"),
        ({"original_value_sha256": "CD" * 32}, "original_value_sha256"),
        ({"truncated": 1}, "truncated"),
        ({"original_value_size": -1}, "original_value_size"),
    ],
)
def test_invalid_dead_letter_fields(changes: dict[str, Any], field: str) -> None:
    error = reason_of(pack(wire(dead_letter(), **changes)), DeadLetter)
    assert (error.reason, error.field) == ("invalid_field", field)


def test_encode_validates_like_decode() -> None:
    with pytest.raises(MessageError) as info:
        encode(frame(encoding="raw-rgb", width=2, height=2, image=b"short"))
    assert (info.value.reason, info.value.field) == ("invalid_field", "image")
    with pytest.raises(MessageError) as info:
        encode(frame(captured_at="now"))  # type: ignore[arg-type]
    assert info.value.reason == "invalid_field"


def test_validate_false_encodes_bad_messages_for_fault_injection() -> None:
    bad = frame(encoding="raw8", width=8192, height=8192, image=b"tiny")
    data = encode(bad, validate=False)
    assert reason_of(data).reason == "too_large"


def test_message_error_carries_reason_detail_and_field() -> None:
    error = reason_of(pack(wire(frame(), encoding="gif")))
    assert error.reason in codec.REASONS
    assert error.detail and str(error).startswith("invalid_field: ")
    assert isinstance(error, ValueError)


def test_a_string_within_its_character_limit_decodes_whatever_its_utf8_size() -> None:
    """Limits count characters, msgpack counts bytes: what encode accepts must decode."""
    name = "\U0001f600" * 400_000  # 400k characters, 1.6 MB of UTF-8: within a header name's limit
    letter = dead_letter(headers=((name, b"v"),))
    assert not letter.truncated
    assert decode(encode(letter), DeadLetter) == letter


# ---- claim checks (Frame and DefectEvent version 2) ------------------------------------------

REF = FrameRef(
    uri="file:///srv/frames/claims/2026-12-01/09/f-1-0123456789abcdef.png", size=9_000_000, sha256="ab" * 32
)


@pytest.mark.parametrize("make", [frame, defect], ids=["Frame", "DefectEvent"])
def test_a_claim_check_replaces_the_image(make: Any) -> None:
    message = make(image=None, image_ref=REF, width=5472, height=3648)  # 20 megapixels, 9 MB
    assert decode(encode(message), type(message)) == message
    assert schema_of(encode(message))[1] == 2
    both = wire(message, image=make().image)
    neither = wire(make(), image=None)
    for bad in (both, neither):
        error = reason_of(pack(bad), type(message))
        assert (error.reason, error.field) == ("invalid_field", "image")


def test_a_claim_check_is_checked_before_anyone_fetches_it() -> None:
    ref = {"uri": REF.uri, "size": REF.size, "sha256": REF.sha256}
    base = frame(image=None, image_ref=REF, width=5472, height=3648)
    assert reason_of(pack(wire(base, width=None, height=None))).reason == "invalid_field"  # no size
    assert reason_of(pack(wire(base, width=8193, height=8192))).reason == "too_large"
    assert reason_of(pack(wire(base, image_ref={**ref, "sha256": "AB" * 32}))).field == "image_ref.sha256"
    assert reason_of(pack(wire(base, image_ref={**ref, "size": 0}))).field == "image_ref.size"
    assert reason_of(pack(wire(base, image_ref={**ref, "uri": ""}))).field == "image_ref.uri"
    raw_ref = dataclasses.replace(REF, size=4096 * 4097)
    raw = frame(encoding="raw8", image=None, image_ref=raw_ref, width=4096, height=4097)
    assert decode(encode(raw), Frame) == raw
    error = reason_of(pack(wire(raw, width=4096, height=4096)))
    assert (error.reason, error.field) == ("invalid_field", "image_ref.size")
    # An inline image keeps the wire's pixel limit.
    assert reason_of(pack(wire(frame(), width=5472, height=3648))).reason == "too_large"


def test_version_1_is_still_read_and_has_no_claim_check() -> None:
    old = wire(frame(), v=1, image_ref=DROP)
    assert decode(pack(old), Frame) == frame()
    error = reason_of(pack(wire(frame(image=None, image_ref=REF, width=64, height=64), v=1)))
    assert (error.reason, error.field) == ("invalid_field", "image_ref")
    old_defect = wire(defect(), v=1, image_ref=DROP)
    assert decode(pack(old_defect), DefectEvent) == defect()
