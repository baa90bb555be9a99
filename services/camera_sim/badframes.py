"""Bad frames on purpose: each kind is a way a real camera, gateway or bug can break a record.

Every kind must reach the scorer's dead-letter topic with its reason, and nothing else. Plain
functions of a good frame and a random generator; the publisher sends what they return.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import time
import zlib

import numpy as np
from PIL import Image

from shared.messages.codec import encode
from shared.messages.schemas import Frame, ModelAnnouncement

OVERSIZED_SIDE = 60_000  # declared width and height: 3.6 gigapixels, far over any frame limit


def bad_record_value(kind: str, frame: Frame, rng: np.random.Generator) -> bytes:
    """The record value that replaces ``frame`` for a bad frame of ``kind`` (see plan.BAD_KINDS)."""
    if frame.image is None:  # a claim-checked frame: its bad twin is the reference to nothing
        ref = frame.image_ref
        assert ref is not None  # the codec lets no frame without either through
        return encode(dataclasses.replace(frame, image_ref=dataclasses.replace(ref, sha256="0" * 64)))
    if kind == "corrupt_bytes":
        noise = rng.integers(0, 256, size=max(64, len(frame.image)), dtype=np.uint8).tobytes()
        return encode(dataclasses.replace(frame, image=noise))
    if kind == "truncated_image":
        cut = frame.image[: max(16, len(frame.image) // 2)]
        return encode(dataclasses.replace(frame, image=cut))
    if kind == "wrong_schema":
        # A well-formed message of another schema, as a misrouted producer would send.
        return encode(
            ModelAnnouncement(
                model_version=f"not-a-frame-{frame.frame_id}",
                path="/nonexistent",
                announced_at=time.time_ns(),
                sha256="0" * 64,
            )
        )
    if kind == "oversized_dimensions":
        image = oversized_png(OVERSIZED_SIDE, OVERSIZED_SIDE)
        # Declared fields stay inside the schema's per-side limit, but their product is far over the
        # pixel limit; the PNG header claims even more. Both must be caught before any decoding.
        side = 16_000
        oversized = dataclasses.replace(frame, image=image, encoding="png", width=side, height=side)
        return encode(oversized, validate=False)  # the point is to send what validation refuses
    if kind == "undecodable":
        # 0xc1 is never used by msgpack, so no decoder can read this as a message.
        return b"\xc1" + rng.integers(0, 256, size=63, dtype=np.uint8).tobytes()
    raise ValueError(f"unknown bad frame kind {kind!r}")


def oversized_png(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # The IHDR chunk follows the 8-byte signature: length(4) type(4) width(4) height(4) ... crc(4).
    ihdr_start = 8
    length = struct.unpack(">I", data[ihdr_start : ihdr_start + 4])[0]
    body_start = ihdr_start + 8
    data[body_start : body_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start + 4 : body_start + length]))
    data[body_start + length : body_start + length + 4] = struct.pack(">I", crc)
    return bytes(data)
