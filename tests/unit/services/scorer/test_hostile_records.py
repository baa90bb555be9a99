"""Records that used to take a scorer down (issue 9, finding 1): each must end as one dead letter
that fits the dead-letter topic, built before any transaction begins, never as an exception."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from services.camera_sim.images import encode_jpeg
from services.scorer.core import RawRecord, RecordOutcome, decode_record
from shared.limits import DEAD_LETTER_MAX_BYTES, KAFKA_MAX_MESSAGE_BYTES, MAX_HEADERS, MAX_MESSAGE_BYTES
from shared.messages.codec import decode, encode
from shared.messages.schemas import DeadLetter
from tests.support.messages import frame

TOPIC = "lineguard.frames"


def _frame_bytes() -> bytes:
    return encode(frame(image=encode_jpeg(np.full((24, 32, 3), 120, np.uint8))))


def _letter(record: RawRecord) -> DeadLetter:
    outcome = decode_record(record, max_image_bytes=8 << 20)
    assert isinstance(outcome, RecordOutcome) and outcome.dead_letter is not None
    return outcome.dead_letter


def _fits_the_dlq(letter: DeadLetter, key: bytes | None) -> bytes:
    """The letter encodes, decodes back unchanged, and its Kafka record fits the topic."""
    wire = encode(letter)
    assert len(wire) <= DEAD_LETTER_MAX_BYTES
    assert decode(wire, DeadLetter) == letter
    assert len(wire) + len(key or b"") < KAFKA_MAX_MESSAGE_BYTES
    return wire


def test_a_bad_record_with_a_null_header_value_is_dead_lettered_with_the_null_kept() -> None:
    record = RawRecord(TOPIC, 0, 7, b"cam", b"\xc1 not msgpack", (("trace", None), ("frame-id", b"f-9")))
    letter = _letter(record)
    assert letter.reason == "malformed" and not letter.truncated
    assert letter.original_headers == [("trace", None), ("frame-id", b"f-9")]
    _fits_the_dlq(letter, record.key)


def test_a_record_larger_than_a_dead_letter_gets_a_truncated_copy_with_its_size_and_sha256() -> None:
    value = b"\xc1" + bytes(DEAD_LETTER_MAX_BYTES)  # within the frames topic's limit, over a letter's
    assert len(value) < KAFKA_MAX_MESSAGE_BYTES
    record = RawRecord(TOPIC, 1, 42, b"cam", value, (("frame-id", b"f-1"),))
    letter = _letter(record)
    assert letter.reason == "too_large" and letter.truncated
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (TOPIC, 1, 42)
    assert letter.original_value_size == len(value)
    assert letter.original_value_sha256 == hashlib.sha256(value).hexdigest()
    assert value.startswith(letter.original_value) and len(letter.original_value) < MAX_MESSAGE_BYTES
    assert letter.original_headers == [("frame-id", b"f-1")]
    _fits_the_dlq(letter, record.key)


def test_more_headers_than_a_dead_letter_holds_are_cut_and_counted() -> None:
    headers = tuple((f"h{i}", b"v") for i in range(MAX_HEADERS + 50))
    record = RawRecord(TOPIC, 0, 1, b"cam", b"\xc1", headers)
    letter = _letter(record)
    assert letter.truncated and letter.original_header_count == MAX_HEADERS + 50
    assert letter.original_headers == [list(h) for h in headers[: len(letter.original_headers)]] or (
        letter.original_headers == list(headers[: len(letter.original_headers)])
    )
    assert len(letter.original_headers) <= MAX_HEADERS
    _fits_the_dlq(letter, record.key)


@pytest.mark.parametrize("key_size", [(1 << 20) + 1, 4 << 20])
def test_a_very_large_key_is_cut_and_its_size_kept(key_size: int) -> None:
    key = b"k" * key_size
    record = RawRecord(TOPIC, 0, 3, key, b"\xc1", ())
    letter = _letter(record)
    assert letter.truncated and letter.original_key_size == key_size
    assert letter.original_key is not None and key.startswith(letter.original_key)
    _fits_the_dlq(letter, letter.original_key)


def test_a_header_value_over_the_letter_limit_is_cut() -> None:
    record = RawRecord(TOPIC, 0, 3, None, b"\xc1", (("big", b"x" * (2 << 20)),))
    letter = _letter(record)
    assert letter.truncated and letter.original_key is None and letter.original_key_size == 0
    ((name, value),) = letter.original_headers
    assert name == "big" and value is not None and 0 < len(value) < (2 << 20)
    _fits_the_dlq(letter, None)


def test_a_whole_letter_keeps_everything_and_says_so() -> None:
    value = b"\xc1" + bytes(1000)
    record = RawRecord(TOPIC, 0, 3, b"cam", value, (("a", b"1"),))
    letter = _letter(record)
    assert not letter.truncated
    assert (letter.original_key, letter.original_value, letter.original_headers) == (
        b"cam",
        value,
        [("a", b"1")],
    )
    assert (letter.original_key_size, letter.original_value_size, letter.original_header_count) == (
        3,
        1001,
        1,
    )
    _fits_the_dlq(letter, record.key)


def test_a_good_frame_with_null_and_odd_headers_still_decodes() -> None:
    headers = (("traceparent", None), ("tracestate", b"\xff\xfe"), ("x", b"y"))
    outcome = decode_record(RawRecord(TOPIC, 0, 0, None, _frame_bytes(), headers), max_image_bytes=8 << 20)
    assert not isinstance(outcome, RecordOutcome)


def test_dead_letter_changes_are_a_new_schema_version() -> None:
    assert DeadLetter.VERSION == 2
    names = {f.name for f in dataclasses.fields(DeadLetter)}
    assert {"truncated", "original_value_size", "original_value_sha256"} <= names
