"""A claim-checked frame in the scorer's core: scored from verified bytes, or exactly one dead letter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.scorer.core import DecodedFrame, RawRecord, RecordOutcome, build_outcomes, decode_record
from shared.frames_store import ClaimStore
from shared.messages.codec import encode
from shared.messages.schemas import Frame
from shared.settings import LatePolicy
from tests.support.messages import frame, score_result

MAX_BYTES = 8 << 20
SIZE = (5472, 3648)  # 20 megapixels: over the wire's pixel limit, so only by reference


def png(width: int, height: int) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 1] = 90
    pixels[1800:1900, 2700:2900] = 250
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


@pytest.fixture(scope="module")
def large_png() -> bytes:
    return png(*SIZE)


def checked(store: ClaimStore, image: bytes) -> Frame:
    return store.claim_check(frame(encoding="png", image=image))


def decoded(value: bytes, store: ClaimStore | None) -> DecodedFrame | RecordOutcome:
    record = RawRecord("lineguard.frames", 0, 7, b"cam", value, ())
    return decode_record(record, max_image_bytes=MAX_BYTES, reduce_to=224, store=store)


def test_a_referenced_20_megapixel_png_is_scored_at_its_own_size(tmp_path: Path, large_png: bytes) -> None:
    store = ClaimStore(tmp_path)
    sent = checked(store, large_png)
    assert sent.image is None and (sent.width, sent.height) == SIZE
    item = decoded(encode(sent), store)
    assert isinstance(item, DecodedFrame)
    assert item.frame_size == (SIZE[1], SIZE[0]) and min(item.pixels.shape[:2]) >= 224
    assert max(item.pixels.shape[:2]) < SIZE[0]  # decoded only as far as the model needs
    amap = np.zeros(item.pixels.shape[:2], np.float32)
    amap[10:20, 10:20] = 1.0
    result = score_result("reject", raw_score=3.0, score=0.9, anomaly_map=amap)
    (outcome,) = build_outcomes([item], [result], model_version="v", late_policy=LatePolicy.REJECT)
    assert outcome.defect is not None and outcome.defect.image is None
    assert (
        outcome.defect.image_ref == sent.image_ref and (outcome.defect.width, outcome.defect.height) == SIZE
    )
    assert len(encode(outcome.defect)) < MAX_BYTES


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("delete", "frame_missing"),
        ("alter", "frame_hash_mismatch"),
        ("truncate", "frame_size_mismatch"),
    ],
)
def test_a_missing_or_altered_frame_is_one_dead_letter_never_a_verdict(
    tmp_path: Path, damage: str, reason: str
) -> None:
    store = ClaimStore(tmp_path)
    sent = checked(store, png(640, 480))
    assert sent.image_ref is not None
    path = Path(store.path_of(sent.image_ref))
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "alter":
        path.write_bytes(data[:-20] + bytes(20))
    else:
        path.write_bytes(data[:100])
    outcome = decoded(encode(sent), store)
    assert isinstance(outcome, RecordOutcome)
    assert outcome.verdict is None and outcome.defect is None
    assert outcome.dead_letter is not None and outcome.dead_letter.reason == reason
    assert sent.frame_id in outcome.dead_letter.detail


def test_a_reference_without_a_store_or_outside_it_is_a_dead_letter(tmp_path: Path) -> None:
    store = ClaimStore(tmp_path / "a")
    sent = encode(checked(store, png(64, 48)))
    for reader, reason in ((None, "no_claim_store"), (ClaimStore(tmp_path / "b"), "ref_outside_store")):
        outcome = decoded(sent, reader)
        assert isinstance(outcome, RecordOutcome) and outcome.dead_letter is not None
        assert outcome.dead_letter.reason == reason
