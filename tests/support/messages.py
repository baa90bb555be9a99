"""Builders for every message on the wire, for tests and benchmarks: one place that knows what a
plausible Frame, Verdict, DefectEvent, DeadLetter, ModelAnnouncement (and its history entry) or
AlertEvent looks like.

Each builder gives a valid message from a few keywords; the defaults are one station of one line
(``line-1``/``st-1``, camera ``cam-1``, product ``washer``). Verdicts are made the way the scorer
makes them, by ``Verdict.for_frame`` from a frame and an engine result, so a test cannot build a
verdict the scorer could not. Timestamps default to now (frames have deadlines, the PLC bridge
watches for silence); pass ``captured_at`` where a test needs a fixed one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.engine.config import Decision, Region, ScoreResult
from shared.messages.schemas import (
    AlertEvent,
    DeadLetter,
    DefectEvent,
    Frame,
    ModelAnnouncement,
    ModelHistoryEntry,
    Verdict,
)
from tests.support.images import jpeg_bytes, png_bytes

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z in ns: a fixed capture time
TINY_JPEG = b"\xff\xd8\xff\xe0jpeg"  # a JPEG's first bytes: a valid Frame, not a decodable image


def frame(frame_id: str = "f-1", *, captured_at: int | None = None, **fields: Any) -> Frame:
    """A JPEG frame from ``cam-1`` at ``line-1``/``st-1``, captured now; ``fields`` set any other
    field (``image``, ``encoding``, ``width``, ``product``, ``deadline_ms``, ...)."""
    values: dict[str, Any] = {
        "line_id": "line-1",
        "station_id": "st-1",
        "camera_id": "cam-1",
        "encoding": "jpeg",
        "image": TINY_JPEG,
        **fields,
    }
    return Frame(
        frame_id=frame_id, captured_at=time.time_ns() if captured_at is None else captured_at, **values
    )


def verdict(
    frame_id: str = "f-1",
    decision: str = "pass",
    *,
    score: float = 0.2,
    raw_score: float | None = None,
    threshold: float = 1.0,
    product: str = "washer",
    route_confidence: float = 0.9,
    regions: Sequence[Region] = (),
    model_version: str = "m1",
    captured_at: int | None = None,
    latency_ms: float = 5.0,
    late: bool = False,
    reason: str = "",
    line_id: str = "line-1",
    station_id: str = "st-1",
    camera_id: str = "cam-1",
) -> Verdict:
    """The scorer's verdict on a frame decided ``latency_ms`` after its capture (by default, decided
    now). ``raw_score`` defaults to twice ``score``; ``regions`` are the engine's."""
    if captured_at is None:
        captured_at = time.time_ns() - round(latency_ms * 1e6)
    source = frame(
        frame_id, captured_at=captured_at, line_id=line_id, station_id=station_id, camera_id=camera_id
    )
    result = score_result(
        decision,
        product_class=product,
        route_confidence=route_confidence,
        raw_score=2 * score if raw_score is None else raw_score,
        score=score,
        threshold=threshold,
        reason=reason,
        regions=list(regions),
        anomaly_map=np.zeros((1, 1), np.float32),
    )
    return Verdict.for_frame(
        source,
        result,
        decision=Decision(decision),
        reason=reason,
        model_version=model_version,
        decided_at=captured_at + round(latency_ms * 1e6),
        late=late,
    )


def score_result(decision: str = "pass", **changes: Any) -> ScoreResult:
    """The engine's answer for one 24x32 image of a washer: ``decision`` with a normalised score of
    0.3 (raw 1.0 against a threshold of 2.0), no regions and a flat anomaly map at 0.5; ``changes``
    set any other field."""
    values: dict[str, Any] = {
        "product_class": "washer",
        "route_confidence": 0.9,
        "hint_mismatch": False,
        "raw_score": 1.0,
        "score": 0.3,
        "threshold": 2.0,
        "reason": "",
        "regions": [],
        "anomaly_map": np.full((24, 32), 0.5, np.float32),
        **changes,
    }
    return ScoreResult(decision=Decision(decision), **values)


def defect_event(
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
    """A real picture (``size`` = width, height) with a bright blemish at ``region`` (x, y, w, h), an
    anomaly map hot there, and the reject verdict that names that region: what the scorer sends
    the explainer, made from pixels, without a model."""
    width, height = size
    rng = np.random.default_rng(seed)
    picture = (rng.integers(90, 110, size=(height, width, 3))).astype(np.uint8)
    x, y, w, h = region
    picture[y : y + h, x : x + w] = (230, 40, 40)
    heat = np.full((height, width), 20, dtype=np.uint8)
    heat[y : y + h, x : x + w] = 220
    decided = verdict(
        frame_id,
        decision,
        score=score,
        product=product,
        route_confidence=0.97,
        regions=[Region(x, y, w, h, score, (w * h) / (width * height))],
        model_version="m-test",
        captured_at=captured_at,
        line_id=line_id,
        station_id=station_id,
    )
    return DefectEvent(
        verdict=decided,
        image=jpeg_bytes(picture),
        encoding="jpeg",
        width=width,
        height=height,
        anomaly_map_png=png_bytes(heat),
    )


@dataclasses.dataclass(frozen=True)
class _Record:
    """The fields of a consumed Kafka record that a dead letter keeps."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]]


def dead_letter(
    reason: str = "malformed",
    *,
    detail: str = "not valid msgpack",
    topic: str = "lineguard.frames",
    partition: int = 3,
    offset: int = 42,
    key: bytes | None = b"cam-1",
    value: bytes = b"\x00\x01garbage",
    headers: Sequence[tuple[str, bytes | None]] = (("traceparent", b"00-abc-def-01"),),
    service: str = "scorer",
    failed_at: int = 5,
) -> DeadLetter:
    """The dead letter a service writes for a record it could not process (``DeadLetter.for_record``)."""
    record = _Record(topic, partition, offset, key, value, list(headers))
    return DeadLetter.for_record(record, reason=reason, detail=detail, service=service, failed_at=failed_at)


def announcement(
    version: str = "m2",
    *,
    sha256: str = "ab" * 32,
    announced_at: int = 9,
    key_id: str = "",
    signature: bytes = b"",
) -> ModelAnnouncement:
    """A model announced on the ``models`` topic (unsigned unless given a key id and signature)."""
    return ModelAnnouncement(
        model_version=version,
        path=f"models/{version}",
        announced_at=announced_at,
        sha256=sha256,
        key_id=key_id,
        signature=signature,
    )


def history_entry(
    version: str = "m2",
    *,
    announced_at: int = 9,
    action: str = "announce",
    actor: str = "ana",
    reason: str = "",
    previous_version: str = "",
    report_sha256: str = "",
    sha256: str = "ab" * 32,
) -> ModelHistoryEntry:
    """An entry of the announcement history: ``announcement(version, ...)`` with how, who and why."""
    return ModelHistoryEntry(
        announcement=announcement(version, sha256=sha256, announced_at=announced_at),
        action=action,
        actor=actor,
        reason=reason,
        report_sha256=report_sha256,
        previous_version=previous_version,
    )


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
