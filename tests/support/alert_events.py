"""Operator alert events as the scorer raises them, for the alerts service's tests."""

from __future__ import annotations

from collections.abc import Sequence

from shared.messages.schemas import AlertEvent


def alert_event(
    alert_id: str,
    *,
    raised_at: int,
    station: str = "st-1",
    kind: str = "consecutive_rejects",
    frame_ids: Sequence[str] = ("f1", "f2"),
) -> AlertEvent:
    """A critical "5 consecutive rejects" alert (or another ``kind``) at line-1/``station``."""
    return AlertEvent(
        alert_id=alert_id,
        kind=kind,
        severity="critical",
        line_id="line-1",
        station_id=station,
        product_class="washer",
        summary=f"5 consecutive rejects at line-1/{station}",
        frame_ids=list(frame_ids),
        details={"count": "5"},
        raised_at=raised_at,
    )
