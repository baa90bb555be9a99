"""Lineguard's Kafka messages: dataclasses (``schemas``), the msgpack codec (``codec``), a frame's
pixels (``pixels``) and the anomaly map's wire encoding (``anomaly_map``)."""

from shared.errors import MessageError
from shared.messages.codec import decode, decode_any, encode
from shared.messages.schemas import (
    DeadLetter,
    DefectEvent,
    Frame,
    ModelAnnouncement,
    RegionMsg,
    Verdict,
)

__all__ = [
    "DeadLetter",
    "DefectEvent",
    "Frame",
    "MessageError",
    "ModelAnnouncement",
    "RegionMsg",
    "Verdict",
    "decode",
    "decode_any",
    "encode",
]
