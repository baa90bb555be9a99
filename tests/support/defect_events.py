"""Defect events built from pixels, for the explainer's tests and benchmark (no model needed)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
from PIL import Image

from shared.messages.schemas import DefectEvent, RegionMsg, Verdict


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_event(
    frame_id: str = "frame-1",
    *,
    product: str = "washer",
    size: tuple[int, int] = (160, 120),
    region: tuple[int, int, int, int] = (100, 10, 30, 8),
    score: float = 0.8,
    decision: str = "reject",
    line_id: str = "line-1",
    station_id: str = "station-1",
    captured_at: int | None = None,
    seed: int = 0,
) -> DefectEvent:
    """A frame with a bright blemish at ``region`` (x, y, w, h) and an anomaly map hot there."""
    width, height = size
    rng = np.random.default_rng(seed)
    frame = (rng.integers(90, 110, size=(height, width, 3))).astype(np.uint8)
    x, y, w, h = region
    frame[y : y + h, x : x + w] = (230, 40, 40)
    heat = np.full((height, width), 20, dtype=np.uint8)
    heat[y : y + h, x : x + w] = 220
    now = time.time_ns() if captured_at is None else captured_at
    verdict = Verdict(
        frame_id=frame_id,
        line_id=line_id,
        station_id=station_id,
        camera_id="cam-1",
        product_class=product,
        route_confidence=0.97,
        decision=decision,
        score=score,
        raw_score=score * 2.0,
        threshold=1.0,
        regions=[
            RegionMsg(x=x, y=y, width=w, height=h, score=score, area_fraction=(w * h) / (width * height))
        ],
        model_version="m-test",
        captured_at=now,
        decided_at=now + 5_000_000,
        latency_ms=5.0,
        late=False,
        reason="",
    )
    return DefectEvent(
        verdict=verdict,
        image=jpeg_bytes(frame),
        encoding="jpeg",
        width=width,
        height=height,
        anomaly_map_png=png_bytes(heat),
    )


def answer_json(
    *,
    location: str = "upper right",
    confidence: float = 0.9,
    anomalous: bool = True,
    severity: str = "moderate",
    defect_type: str = "scratch",
    **overrides: Any,
) -> str:
    """A valid VLM answer."""
    answer: dict[str, Any] = {
        "anomalous": anomalous,
        "confidence": confidence,
        "observations": "A thin bright mark near the upper right edge; the rest of the surface is uniform.",
        "defects": [
            {
                "type": defect_type,
                "location": location,
                "severity": severity,
                "description": "Linear mark about 30 px long.",
                "possible_cause": "Handling contact after forming.",
            }
        ]
        if anomalous
        else [],
        "assessment": "The part has a visible scratch and should not ship as is.",
        "root_cause": "Contact with a fixture edge.",
        "recommended_actions": ["Inspect the transfer fixture for burrs."],
    }
    answer.update(overrides)
    return json.dumps(answer)
