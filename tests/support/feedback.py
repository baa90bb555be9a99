"""Feedback messages and frames for the console's and the labels export's tests."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from PIL import Image, ImageFilter

from services.console.core import FeedbackForm, build_feedback
from shared.engine.config import Region
from shared.messages.schemas import DefectEvent, Feedback, Frame, RegionMsg, Verdict
from shared.synthetic import render_sample
from tests.support import messages
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
    """An operator's judgement of ``verdict``'s frame, as the console would send it (built by the
    console's own ``build_feedback``); ``regions`` are set as given, ``changes`` set any field."""
    form = FeedbackForm(label=label, defect_type=defect_type)
    types = [defect_type] if defect_type else []
    feedback = build_feedback(
        form, verdict, size, types, operator=operator, authenticated_by="token", submitted_at=time.time_ns()
    )
    return dataclasses.replace(feedback, regions=regions or [], **changes)  # type: ignore[arg-type]


def frame_of(verdict: Verdict, pixels: object) -> Frame:
    """The camera frame a verdict was about (PNG), with the verdict's identity."""
    identity = {
        name: getattr(verdict, name) for name in ("line_id", "station_id", "camera_id", "captured_at")
    }
    image = png_bytes(pixels)  # type: ignore[arg-type]
    return messages.frame(
        verdict.frame_id, encoding="png", image=image, product=verdict.product_class, **identity
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
    if len(xs) and decision != "pass":
        x, y = int(xs.min()), int(ys.min())
        w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
        regions = [Region(x=x, y=y, width=w, height=h, score=0.83, area_fraction=(w * h) / 224**2)]
    score = 0.83 if decision != "pass" else float(rng.uniform(0.05, 0.3))
    verdict = messages.verdict(
        frame_id,
        decision,
        score=score,
        threshold=1.0,
        product=product,
        route_confidence=0.98,
        regions=regions,
        model_version=model_version,
        latency_ms=40.0,
        station_id=station_id,
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
