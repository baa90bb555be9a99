"""Hostile records for the frames topic, made by mutating real frames: what a careless or hostile
producer can put there and Kafka accepts (bytes, headers, keys, sizes up to the topic's limit).

``hostile_record(kind, frame, rng)`` turns a good frame into one record of ``kind``. Each record says
which frame id a verdict for it would carry (``frame_id``: the id its value decodes to with the
line's own codec, None when it does not decode as a frame), so a chaos run can account for every
record: one verdict with that id, or one dead letter at its partition and offset. The frame-id
header always comes first, so a truncated dead letter still names it.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import msgpack
import numpy as np
from PIL import Image

from services.camera_sim.badframes import bad_record_value, oversized_png
from services.camera_sim.truth import FRAME_ID_HEADER
from shared.errors import MessageError
from shared.limits import DEAD_LETTER_MAX_BYTES, KAFKA_MAX_MESSAGE_BYTES, MAX_DIMENSION, MAX_HEADERS
from shared.messages.codec import decode, encode
from shared.messages.schemas import Frame

Headers = list[tuple[str, bytes | None]]

# Kinds whose records are megabytes: a run caps how many it sends (see ``BIG_KINDS``).
BIG_KINDS = ("oversize", "huge_key")
HOSTILE_KINDS = (
    *BIG_KINDS,
    "null_header",
    "many_headers",
    "null_value",
    "image_bit_flips",
    "record_bit_flips",
    "truncated_record",
    "field_values",
    "non_finite_fields",
    "long_side",
    "huge_dimensions",
    "bomb",
    "raw_mismatch",
    "corrupt_bytes",
    "truncated_image",
    "wrong_schema",
    "oversized_dimensions",
    "undecodable",
)


@dataclass(frozen=True)
class FuzzRecord:
    kind: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    frame_id: str | None  # the id a verdict would carry; None: it cannot get one


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, format="PNG", optimize=True)  # 36 Mpx in a few KB
    return buffer.getvalue()


_BOMB = _bomb()


def frame_id_of_value(value: bytes | None) -> str | None:
    """The frame id a verdict for this value would carry: its id if the line's codec reads it as a
    frame, else None."""
    if value is None:
        return None
    try:
        return decode(value, Frame).frame_id
    except MessageError:
        return None


def _flip(data: bytes, rng: np.random.Generator, flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
    return bytes(out)


def _value(kind: str, frame: Frame, rng: np.random.Generator) -> tuple[bytes | None, bytes | None, Headers]:
    """(key, value, extra headers) of a hostile record of ``kind`` made from ``frame``."""
    key: bytes | None = frame.camera_id.encode()
    good = encode(frame)
    if kind == "oversize":  # larger than a dead letter holds whole, within the topic's limit
        size = int(rng.integers(DEAD_LETTER_MAX_BYTES, KAFKA_MAX_MESSAGE_BYTES - (64 << 10)))
        return key, b"\xc1" * size, []
    if kind == "huge_key":
        return b"k" * int(rng.integers(1 << 20, 3 << 20)), good, []
    if kind == "null_header":
        return key, good, [("empty", None), ("traceparent", None)]
    if kind == "many_headers":
        return key, good, [(f"h{i}", b"v" * int(rng.integers(0, 64))) for i in range(MAX_HEADERS + 44)]
    if kind == "null_value":
        return key, None, []
    if kind == "image_bit_flips":
        assert frame.image is not None, "the fuzzer mutates frames that carry their image"
        flipped = _flip(frame.image, rng, int(rng.integers(1, 32)))
        return key, encode(dataclasses.replace(frame, image=flipped), validate=False), []
    if kind == "record_bit_flips":
        return key, _flip(good, rng, int(rng.integers(1, 8))), []
    if kind == "truncated_record":
        return key, good[: int(rng.integers(0, len(good)))], []
    if kind in ("field_values", "non_finite_fields"):
        wire = msgpack.unpackb(good, raw=False)
        field = sorted(wire)[int(rng.integers(0, len(wire)))]
        choices: list[object] = (
            [math.nan, math.inf, -math.inf]
            if kind == "non_finite_fields"
            else [None, -1, (1 << 64) - 1, "x" * 300, b"\x00" * 50, [], {"a": 1}, 0.5, MAX_DIMENSION + 1]
        )
        wire[field] = choices[int(rng.integers(0, len(choices)))]
        return key, msgpack.packb(wire, use_bin_type=True), []
    if kind == "long_side":
        return key, encode(dataclasses.replace(frame, image=oversized_png(20_000, 1), encoding="png")), []
    if kind == "huge_dimensions":
        side = int(rng.integers(MAX_DIMENSION // 2, MAX_DIMENSION + 1))
        image = oversized_png(side, side)
        return key, encode(dataclasses.replace(frame, image=image, encoding="png"), validate=False), []
    if kind == "bomb":
        return key, encode(dataclasses.replace(frame, image=_BOMB, encoding="png")), []
    if kind == "raw_mismatch":  # raw pixels whose length disagrees with the declared dimensions
        raw = dataclasses.replace(frame, image=bytes(300), encoding="raw8", width=17, height=19)
        return key, encode(raw, validate=False), []
    # The camera simulator's own bad frames.
    return key, bad_record_value(kind, frame, rng), []


def hostile_record(kind: str, frame: Frame, rng: np.random.Generator) -> FuzzRecord:
    """One hostile record of ``kind`` made from ``frame`` (its id in the first header)."""
    if kind not in HOSTILE_KINDS:
        raise ValueError(f"unknown hostile kind {kind!r}")
    key, value, extra = _value(kind, frame, rng)
    headers: Headers = [(FRAME_ID_HEADER, frame.frame_id.encode()), *extra]
    size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers)
    assert size < KAFKA_MAX_MESSAGE_BYTES, (kind, size)  # anything the topic accepts, nothing more
    return FuzzRecord(kind, key, value, headers, frame_id_of_value(value))
