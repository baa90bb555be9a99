"""The announcement history's message: the announcement kept whole (signature included), the rest checked."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from shared.messages.codec import MessageError, decode, decode_any, encode
from shared.messages.schemas import ModelHistoryEntry
from tests.support.messages import announcement, history_entry


def test_round_trip_keeps_the_signed_announcement_whole() -> None:
    signed = announcement("m3", announced_at=42, key_id="0123456789abcdef", signature=bytes(range(64)))
    entry = dataclasses.replace(
        history_entry(
            action="promote", reason="shadow run r1", previous_version="m2", report_sha256="cd" * 32
        ),
        announcement=signed,
    )
    data = encode(entry)
    assert decode(data, ModelHistoryEntry) == entry
    assert decode_any(data) == entry
    assert decode(data, ModelHistoryEntry).announcement.signature == bytes(range(64))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"action": "deploy"}, "action"),
        ({"actor": ""}, "actor"),
        ({"report_sha256": "xyz"}, "report_sha256"),
        ({"report_sha256": "AB" * 32}, "report_sha256"),
        ({"announcement": announcement(sha256="Z" * 64)}, "announcement.sha256"),
    ],
)
def test_invalid_entries_are_refused_both_ways(changes: dict[str, object], field: str) -> None:
    bad = dataclasses.replace(history_entry(), **changes)  # type: ignore[arg-type]
    with pytest.raises(MessageError) as refused:
        encode(bad)
    assert refused.value.reason == "invalid_field" and refused.value.field == field
    wire = msgpack.packb(msgpack.unpackb(encode(bad, validate=False), raw=False), use_bin_type=True)
    with pytest.raises(MessageError):
        decode(wire, ModelHistoryEntry)
