"""The feedback topic taken whole: each frame's latest operator judgement (the labels export and the
shadow report both read it so)."""

from __future__ import annotations

from collections.abc import Callable

from services.labels.core import latest_feedback
from shared.errors import MessageError
from shared.kafka.reading import read_topic
from shared.messages.codec import decode
from shared.messages.schemas import Feedback
from shared.settings import Settings


async def read_latest_feedback(
    settings: Settings, timeout_s: float, skipped: Callable[[int, MessageError], None]
) -> dict[str, Feedback]:
    """Frame id -> its latest judgement, read from the beginning of the feedback topic; a withdrawn
    judgement (a tombstone) removes the frame. A record that does not decode is left out and
    reported to ``skipped`` with its offset."""
    records: list[tuple[bytes | None, Feedback | None]] = []
    async for record in read_topic(settings, "feedback", timeout_s):
        if record.value is None:
            records.append((record.key, None))
            continue
        try:
            records.append((record.key, decode(record.value, Feedback)))
        except MessageError as exc:
            skipped(record.offset, exc)
    return latest_feedback(records)
