"""Claim checks on the real broker: a 20-megapixel PNG from a hot folder travels by reference,
gets exactly one verdict, and the explainer reports on its verified bytes; a missing or altered
frame is one dead letter with the reason, never a verdict.

The VLM is the local OpenAI-protocol server (tests/support/openai_server.py); Kafka is real.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.frames_store import ClaimStore
from shared.kafka.client import make_producer
from shared.limits import MAX_IMAGE_BYTES, MAX_PIXELS
from shared.messages.codec import decode, encode
from shared.messages.schemas import DeadLetter, DefectEvent, Frame, Report, Verdict
from shared.settings import Settings
from tests.support.gateway import cameras, gateway_line, gateway_settings
from tests.support.images import write_atomically
from tests.support.line import LineModels, running_scorer, scorer_settings, with_explainer
from tests.support.messages import defect_event
from tests.support.openai_server import FakeOpenAIServer
from tests.support.reports import valid_answer
from tests.support.services import running_explainer
from tests.support.topics import TopicReader, read_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIDTH, HEIGHT = 5472, 3648  # 20 megapixels


def twenty_megapixels() -> bytes:
    """A PNG no washer looks like (a blue and yellow checkerboard of 456 px squares, noise in its
    green: rejected), of ~20 MB: over the wire's byte limit and its pixel limit."""
    rng = np.random.default_rng(7)
    squares = ((np.arange(HEIGHT)[:, None] // 456) + (np.arange(WIDTH)[None, :] // 456)) % 2 == 0
    pixels = np.where(squares[:, :, None], np.uint8([20, 20, 200]), np.uint8([200, 180, 20]))
    pixels[:, :, 1] += rng.integers(0, 16, size=(HEIGHT, WIDTH), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


@pytest.fixture
def vlm_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=valid_answer) as server:
        yield server


def with_claims(settings: Settings, root: Path) -> Settings:
    return settings.model_copy(
        update={"claim_check": settings.claim_check.model_copy(update={"url": str(root)})}
    )


async def test_a_20_megapixel_png_goes_by_reference_to_one_verdict_and_a_report(
    kafka_settings: Settings, line_models: LineModels, vlm_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    data = await asyncio.to_thread(twenty_megapixels)
    assert len(data) > MAX_IMAGE_BYTES and WIDTH * HEIGHT > MAX_PIXELS  # it cannot travel inline
    settings = with_claims(gateway_settings(scorer_settings(kafka_settings)), tmp_path / "claims")
    settings = with_explainer(settings, tmp_path / "reports", vlm_server)
    hot = tmp_path / "hot"
    hot.mkdir()
    config = cameras(
        {"camera_id": "big-1", "station_id": "station-1", "product": "washer",
         "folder": {"path": str(hot), "settle_s": 0.3, "rescan_s": 1.0}}
    )  # fmt: skip
    async with (
        running_explainer(settings),
        TopicReader(settings, "defects", DefectEvent) as defects,
        TopicReader(settings, "dlq", DeadLetter) as dead,
        gateway_line(settings, line_models.a, config) as (verdicts, frames),
    ):
        write_atomically(hot / "big.png", data)
        got = await verdicts.wait_for(1, timeout=180, settle=3.0)
        reports = await read_records(settings, "reports", 1, timeout_s=120)
        await asyncio.sleep(1.0)
    (verdict,) = got.values
    assert isinstance(verdict, Verdict) and verdict.decision == "reject"
    (frame,) = frames.received.values
    assert isinstance(frame, Frame) and frame.image is None and frame.image_ref is not None
    assert (frame.width, frame.height) == (WIDTH, HEIGHT) and frame.image_ref.size == len(data)
    assert ClaimStore(tmp_path / "claims").fetch(frame.image_ref) == data  # the camera's bytes
    (event,) = defects.received.values
    assert event.image is None and event.image_ref == frame.image_ref
    assert (event.width, event.height) == (WIDTH, HEIGHT)
    assert len(dead) == 0
    (record,) = reports
    report = decode(record.value, Report)
    # A VLM report: the explainer had the frame's pictures (without them it writes a fallback).
    assert report.frame_id == frame.frame_id and report.source == "vlm" and report.fallback_reason == ""
    (request,) = vlm_server.chat_requests()
    assert "data:image/jpeg;base64," in str(request)
    html = (tmp_path / "reports" / report.report_path).with_suffix(".html").read_text()
    assert "data:image/jpeg;base64," in html


async def test_a_missing_or_altered_frame_is_one_dead_letter_for_scorer_and_explainer(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = with_claims(scorer_settings(kafka_settings), tmp_path / "claims")
    store = ClaimStore(tmp_path / "claims")
    small = io.BytesIO()
    Image.fromarray(np.full((96, 96, 3), 120, np.uint8)).save(small, format="PNG")
    altered = store.claim_check(Frame("alt-1", "line-1", "station-1", "cam-1", 1, "png", small.getvalue()))
    missing = store.claim_check(Frame("mis-1", "line-1", "station-1", "cam-1", 2, "png", small.getvalue()))
    assert altered.image_ref is not None and missing.image_ref is not None
    path = Path(store.path_of(altered.image_ref))
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    Path(store.path_of(missing.image_ref)).unlink()
    event = defect_event("gone-1")
    gone = store.claim_check(Frame("gone-1", "line-1", "station-1", "cam-1", 3, "png", small.getvalue()))
    assert gone.image_ref is not None
    Path(store.path_of(gone.image_ref)).unlink()
    event_ref = DefectEvent(
        verdict=event.verdict,
        image=None,
        encoding="png",
        width=96,
        height=96,
        anomaly_map_png=event.anomaly_map_png,
        image_ref=gone.image_ref,
    )
    async with make_producer(settings) as producer:
        for frame in (altered, missing):
            await producer.send_and_wait(settings.topic("frames"), encode(frame), key=b"cam-1")
        await producer.send_and_wait(settings.topic("defects"), encode(event_ref), key=b"station-1")
    settings = with_explainer(settings, tmp_path / "reports")
    async with (
        running_explainer(settings),
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        TopicReader(settings, "dlq", DeadLetter) as dead,
        running_scorer(settings, line_models.a),
    ):
        letters = await dead.wait_for(3, timeout=90, settle=3.0)
        assert len(verdicts) == 0
    by_service = sorted((d.service, d.reason) for d in letters.values)
    assert by_service == [
        ("explainer", "frame_missing"),
        ("scorer", "frame_hash_mismatch"),
        ("scorer", "frame_missing"),
    ]
    assert len(await read_records(settings, "reports", 1, timeout_s=2.0)) == 0
