"""Feedback messages and frames for the console's and the labels export's tests."""

from __future__ import annotations

import dataclasses
import time

from shared.messages.schemas import Feedback, Frame, RegionMsg, Verdict
from tests.support.defect_events import png_bytes


def judgement(
    verdict: Verdict,
    label: str,
    *,
    defect_type: str = "",
    regions: list[RegionMsg] | None = None,
    size: tuple[int, int] | None = None,
    operator: str = "Ana",
    **changes: object,
) -> Feedback:
    """An operator's judgement of ``verdict``'s frame, as the console would send it."""
    width, height = size if size is not None else (None, None)
    feedback = Feedback(
        frame_id=verdict.frame_id,
        line_id=verdict.line_id,
        station_id=verdict.station_id,
        camera_id=verdict.camera_id,
        product_class=verdict.product_class,
        label=label,
        defect_type=defect_type,
        regions=regions or [],
        width=width,
        height=height,
        decision=verdict.decision,
        score=verdict.score,
        model_version=verdict.model_version,
        captured_at=verdict.captured_at,
        operator=operator,
        authenticated_by="token",
        submitted_at=time.time_ns(),
        comment="",
    )
    return dataclasses.replace(feedback, **changes)  # type: ignore[arg-type]


def frame_of(verdict: Verdict, pixels: object) -> Frame:
    """The camera frame a verdict was about (PNG), with the verdict's identity."""
    image = png_bytes(pixels)  # type: ignore[arg-type]
    return Frame(
        frame_id=verdict.frame_id,
        line_id=verdict.line_id,
        station_id=verdict.station_id,
        camera_id=verdict.camera_id,
        captured_at=verdict.captured_at,
        encoding="png",
        image=image,
        product=verdict.product_class,
    )
