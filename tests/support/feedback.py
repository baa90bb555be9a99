"""Feedback messages and frames for the console's and the labels export's tests."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from PIL import Image, ImageFilter

from shared.messages.schemas import DefectEvent, Feedback, Frame, RegionMsg, Verdict
from shared.synthetic import render_sample
from tests.support.images import png_bytes


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


def synthetic_event(
    frame_id: str,
    *,
    product: str = "washer",
    defect: str | None = "scratch",
    decision: str = "reject",
    station_id: str = "station-1",
    seed: int = 0,
    model_version: str = "lg-demo-2",
) -> tuple[Verdict, DefectEvent]:
    """A synthetic product photo with a drawn defect, its anomaly map hot over the defect, and the
    verdict and defect event a scorer would publish for it."""
    rng = np.random.default_rng(seed)
    image, mask = render_sample(product, rng, size=224, defect=defect)
    heat = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(6)), dtype=np.float32)
    levels = np.clip(30 + rng.normal(0, 6, heat.shape) + heat * 1.4, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    regions = []
    if len(xs):
        x, y = int(xs.min()), int(ys.min())
        w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
        regions = [RegionMsg(x=x, y=y, width=w, height=h, score=0.83, area_fraction=(w * h) / 224**2)]
    now = time.time_ns()
    score = 0.83 if decision != "pass" else float(rng.uniform(0.05, 0.3))
    verdict = Verdict(
        frame_id=frame_id,
        line_id="line-1",
        station_id=station_id,
        camera_id="cam-1",
        product_class=product,
        route_confidence=0.98,
        decision=decision,
        score=score,
        raw_score=score * 2,
        threshold=1.0,
        regions=regions if decision != "pass" else [],
        model_version=model_version,
        captured_at=now,
        decided_at=now + 40_000_000,
        latency_ms=40.0,
        late=False,
        reason="",
    )
    event = DefectEvent(
        verdict=verdict,
        image=png_bytes(image),
        encoding="png",
        width=224,
        height=224,
        anomaly_map_png=png_bytes(levels),
    )
    return verdict, event
