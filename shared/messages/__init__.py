"""Lineguard's Kafka messages: dataclasses (``schemas``) and the msgpack codec (``codec``)."""

from shared.messages.codec import MessageError, decode, decode_any, encode
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
