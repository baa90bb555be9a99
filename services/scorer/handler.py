"""The scorer's functional core: raw Kafka records in, verdicts, defect events and dead letters out.

No Kafka and no event loop here, so every rule (what is a bad frame, what a late frame gets, what a
defect event carries) is testable with plain calls. The async shell in ``main.py`` runs
``decode_record`` in a thread pool, ``InspectionModel.score_batch`` in an executor, then
``build_outcomes`` and publishes the result in one transaction per input partition.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from shared.engine.images import ImageError, decode_image, raw_to_rgb
from shared.messages.codec import MessageError, decode
from shared.messages.schemas import (
    MAX_PIXELS,
    RAW_CHANNELS,
    DeadLetter,
    DefectEvent,
    Frame,
    RegionMsg,
    Verdict,
)
from shared.settings import LatePolicy

SERVICE = "scorer"
UNKNOWN_CLASS = "unknown"


@dataclass(frozen=True)
class RawRecord:
    """A consumed Kafka record, reduced to what the core needs (and what a dead letter keeps)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class DecodedFrame:
    record: RawRecord
    frame: Frame
    pixels: np.ndarray  # HxWx3 uint8 RGB


@dataclass(frozen=True)
class Outcome:
    """What one input record produces: a verdict (+ defect event), or a dead letter."""

    record: RawRecord
    verdict: Verdict | None = None
    defect: DefectEvent | None = None
    dead_letter: DeadLetter | None = None


class ScoreLike(Protocol):
    """The parts of ``shared.engine.model.ScoreResult`` a verdict is built from."""

    product_class: str
    route_confidence: float
    raw_score: float
    score: float
    threshold: float
    decision: str
    reason: str
    regions: Sequence[Any]
    anomaly_map: np.ndarray


def dead_letter(record: RawRecord, reason: str, detail: str, now_ns: int | None = None) -> DeadLetter:
    return DeadLetter.for_record(record, reason=reason, detail=detail, service=SERVICE, failed_at=now_ns)


def decode_record(
    record: RawRecord, *, max_image_bytes: int, max_pixels: int = MAX_PIXELS
) -> DecodedFrame | Outcome:
    """Decode and validate one record; a bad one comes back as an ``Outcome`` with its dead letter.

    Sizes are checked before any pixel is decoded: the message size by the codec, the declared
    dimensions here, and the image header's dimensions by ``decode_image``.
    """
    try:
        frame = decode(record.value, Frame)
    except MessageError as exc:
        return Outcome(record, dead_letter=dead_letter(record, exc.reason, str(exc)))
    if frame.width is not None and frame.height is not None and frame.width * frame.height > max_pixels:
        detail = f"declared {frame.width}x{frame.height} is over the limit of {max_pixels} pixels"
        return Outcome(record, dead_letter=dead_letter(record, "too_large", detail))
    try:
        if frame.encoding in RAW_CHANNELS:
            assert frame.width is not None and frame.height is not None  # the codec guarantees it
            pixels = raw_to_rgb(
                frame.image, frame.width, frame.height, RAW_CHANNELS[frame.encoding], max_pixels=max_pixels
            )
        else:
            pixels = decode_image(frame.image, max_bytes=max_image_bytes, max_pixels=max_pixels)
    except ImageError as exc:
        return Outcome(record, dead_letter=dead_letter(record, exc.reason, f"frame {frame.frame_id}: {exc}"))
    height, width = pixels.shape[:2]
    if frame.width is not None and (frame.width, frame.height) != (width, height):
        detail = f"frame {frame.frame_id}: declared {frame.width}x{frame.height}, image is {width}x{height}"
        return Outcome(record, dead_letter=dead_letter(record, "bad_dimensions", detail))
    return DecodedFrame(record, frame, pixels)


def anomaly_map_png(anomaly_map: np.ndarray, width: int, height: int) -> bytes:
    """8-bit grayscale PNG of a normalised anomaly map: 0.5 (the class threshold) maps to 128."""
    values = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    pixels = np.clip(np.rint(values * 256.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: it is on the hot path
    return buffer.getvalue()


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


def late_by_ms(frame: Frame, now_ns: int) -> float | None:
    """How many ms past its deadline the frame is at ``now_ns``; None when on time or no deadline."""
    if frame.deadline_ms is None:
        return None
    over_ns = now_ns - (frame.captured_at + frame.deadline_ms * 1_000_000)
    return over_ns / 1e6 if over_ns > 0 else None


def apply_late_policy(
    decision: str, reason: str, over_ms: float, deadline_ms: int, policy: LatePolicy
) -> tuple[str, str]:
    """Fail-safe for a late verdict: the PLC has (or should have) acted already, so be conservative."""
    late = f"late by {over_ms:.0f} ms (deadline {deadline_ms} ms)"
    model_said = f"model said {decision}" + (f": {reason}" if reason else "")
    if policy is LatePolicy.SCORE:
        return decision, f"{late}; {model_said}"
    return policy.value, f"{late}; fail-safe {policy.value} ({model_said})"


def verdict_for(
    frame: Frame,
    result: ScoreLike,
    *,
    model_version: str,
    now_ns: int,
    late_policy: LatePolicy,
) -> Verdict:
    decision, reason = result.decision, result.reason
    over_ms = late_by_ms(frame, now_ns)
    if over_ms is not None:
        assert frame.deadline_ms is not None
        decision, reason = apply_late_policy(decision, reason, over_ms, frame.deadline_ms, late_policy)
    return Verdict(
        frame_id=frame.frame_id,
        line_id=frame.line_id,
        station_id=frame.station_id,
        camera_id=frame.camera_id,
        product_class=result.product_class or UNKNOWN_CLASS,
        route_confidence=min(1.0, max(0.0, _finite(result.route_confidence))),
        decision=decision,
        score=_finite(result.score),
        raw_score=_finite(result.raw_score),
        threshold=_finite(result.threshold),
        regions=[
            RegionMsg(
                x=int(r.x),
                y=int(r.y),
                width=max(1, int(r.width)),
                height=max(1, int(r.height)),
                score=_finite(r.score),
                area_fraction=min(1.0, max(0.0, _finite(r.area_fraction))),
            )
            for r in result.regions
        ],
        model_version=model_version,
        captured_at=frame.captured_at,
        decided_at=now_ns,
        latency_ms=max(0.0, (now_ns - frame.captured_at) / 1e6),
        late=over_ms is not None,
        reason=reason[:4000],
    )


def error_verdict(frame: Frame, *, model_version: str, now_ns: int, reason: str) -> Verdict:
    """The verdict for a valid frame the model could not score: the PLC still gets an answer."""
    over_ms = late_by_ms(frame, now_ns)
    return Verdict(
        frame_id=frame.frame_id,
        line_id=frame.line_id,
        station_id=frame.station_id,
        camera_id=frame.camera_id,
        product_class=frame.product or UNKNOWN_CLASS,
        route_confidence=0.0,
        decision="error",
        score=0.0,
        raw_score=0.0,
        threshold=0.0,
        regions=[],
        model_version=model_version,
        captured_at=frame.captured_at,
        decided_at=now_ns,
        latency_ms=max(0.0, (now_ns - frame.captured_at) / 1e6),
        late=over_ms is not None,
        reason=reason[:4000],
    )


def build_outcomes(
    decoded: Sequence[DecodedFrame],
    results: Sequence[ScoreLike] | None,
    *,
    model_version: str,
    late_policy: LatePolicy,
    now_ns: int | None = None,
    error: str = "",
) -> list[Outcome]:
    """Verdicts (and defect events for reject/review) for scored frames.

    ``results=None`` means the model failed on this batch; each frame then gets an ``error`` verdict
    with ``error`` as the reason.
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    if results is None:
        return [
            Outcome(
                d.record,
                verdict=error_verdict(
                    d.frame, model_version=model_version, now_ns=now_ns, reason=error or "model failed"
                ),
            )
            for d in decoded
        ]
    if len(results) != len(decoded):
        raise ValueError(f"{len(results)} results for {len(decoded)} frames")
    outcomes = []
    for item, result in zip(decoded, results, strict=True):
        verdict = verdict_for(
            item.frame, result, model_version=model_version, now_ns=now_ns, late_policy=late_policy
        )
        defect = None
        if verdict.decision in ("reject", "review"):
            height, width = item.pixels.shape[:2]
            defect = DefectEvent(
                verdict=verdict,
                image=item.frame.image,
                encoding=item.frame.encoding,
                width=width,
                height=height,
                anomaly_map_png=anomaly_map_png(result.anomaly_map, width, height),
            )
        outcomes.append(Outcome(item.record, verdict=verdict, defect=defect))
    return outcomes


def order_by_record(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Outcomes in input order (partition, offset), so each partition's outputs keep frame order."""
    return sorted(outcomes, key=lambda o: (o.record.topic, o.record.partition, o.record.offset))
