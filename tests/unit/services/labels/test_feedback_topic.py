"""The feedback topic read whole: the latest judgement per frame, tombstones withdraw, bad records are
reported and left out. The topic reader is replaced by the records it would yield (the reader itself
runs against a real broker in tests/integration/test_labels_export.py and test_shadow.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any

import pytest

from services.labels import feedback_topic
from shared.errors import MessageError
from shared.messages.codec import encode
from shared.settings import Settings
from tests.support.feedback import judgement
from tests.support.messages import verdict


async def test_the_latest_judgement_per_frame_counts_and_bad_records_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = verdict("f-1"), verdict("f-2")
    values = [
        (b"f-1", encode(judgement(first, "good"))),
        (b"f-2", encode(judgement(second, "good"))),
        (b"f-1", b"\xc1 not msgpack"),
        (b"f-1", encode(judgement(first, "defect", defect_type="scratch"))),
        (b"f-2", None),  # withdrawn
    ]
    asked: list[tuple[str, float]] = []

    async def records(settings: Settings, name: str, timeout_s: float) -> AsyncGenerator[Any, None]:
        asked.append((name, timeout_s))
        for offset, (key, value) in enumerate(values):
            yield SimpleNamespace(offset=offset, key=key, value=value)

    monkeypatch.setattr(feedback_topic, "read_topic", records)
    skipped: list[tuple[int, MessageError]] = []
    latest = await feedback_topic.read_latest_feedback(
        Settings(), 7.0, lambda offset, exc: skipped.append((offset, exc))
    )
    assert asked == [("feedback", 7.0)]
    assert list(latest) == ["f-1"]
    assert (latest["f-1"].label, latest["f-1"].defect_type) == ("defect", "scratch")
    assert [offset for offset, _ in skipped] == [2] and skipped[0][1].reason
