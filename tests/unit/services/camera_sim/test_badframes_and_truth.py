"""Bad frames are bad in the intended way; ground truth round-trips and scores verdicts correctly."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.camera_sim.badframes import bad_record_value, oversized_png
from services.camera_sim.core import BAD_KINDS, DEFECT, NORMAL, SampleSpec
from services.camera_sim.images import encode_jpeg, sample_image
from services.camera_sim.truth import (
    FRAME_ID_HEADER,
    TruthRecord,
    evaluate,
    format_report,
    read_truth,
    write_truth_line,
)
from shared.messages.codec import MessageError, decode
from shared.messages.schemas import DeadLetter, Frame, Verdict


def _frame(image: bytes) -> Frame:
    return Frame(
        frame_id="f-1",
        line_id="l",
        station_id="s",
        camera_id="c",
        captured_at=time.time_ns(),
        encoding="jpeg",
        image=image,
    )


def test_synthetic_sample_is_a_decodable_jpeg() -> None:
    data, encoding = sample_image(SampleSpec("washer", DEFECT, "spot", seed=3), size=96)
    assert encoding == "jpeg"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (96, 96)


def test_dataset_files_are_sent_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(path)
    assert sample_image(SampleSpec("x", NORMAL, None, path=path)) == (path.read_bytes(), "png")
    bmp = tmp_path / "b.bmp"
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(bmp)
    data, encoding = sample_image(SampleSpec("x", NORMAL, None, path=bmp))
    assert encoding == "png" and data.startswith(b"\x89PNG")


def test_oversized_png_declares_the_size_and_is_otherwise_valid() -> None:
    data = oversized_png(60_000, 50_000)
    assert struct.unpack(">II", data[16:24]) == (60_000, 50_000)
    # The header parses (its CRC is fixed up), so the declared size reaches the size checks.
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    with Image.open(io.BytesIO(oversized_png(300, 200))) as image:
        assert image.size == (300, 200)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_kind_fails_strict_frame_decoding_or_image_decoding(kind: str) -> None:
    good = _frame(encode_jpeg(np.zeros((32, 32, 3), np.uint8)))
    value = bad_record_value(kind, good, np.random.default_rng(0))
    if kind in ("corrupt_bytes", "truncated_image"):
        frame = decode(value, Frame)  # a valid message ...
        assert frame.image != good.image  # ... with a broken image
        with pytest.raises(OSError):
            Image.open(io.BytesIO(frame.image)).load()
    else:
        with pytest.raises(MessageError) as err:
            decode(value, Frame)
        assert (
            err.value.reason
            == {
                "wrong_schema": "wrong_schema",
                "oversized_dimensions": "too_large",
                "undecodable": "malformed",
            }[kind]
        )


def test_unknown_bad_kind_is_an_error() -> None:
    with pytest.raises(ValueError):
        bad_record_value("gremlins", _frame(b"x"), np.random.default_rng(0))


def _verdict(frame_id: str, decision: str, product: str = "washer", latency_ms: float = 10.0) -> Verdict:
    now = time.time_ns()
    return Verdict(
        frame_id=frame_id,
        line_id="l",
        station_id="s",
        camera_id="c",
        product_class=product,
        route_confidence=1.0,
        decision=decision,
        score=0.4,
        raw_score=1.0,
        threshold=2.0,
        regions=[],
        model_version="m",
        captured_at=now - int(latency_ms * 1e6),
        decided_at=now,
        latency_ms=latency_ms,
        late=False,
        reason="",
    )


def _letter(frame_id: str, reason: str) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        detail="",
        source_topic="t",
        source_partition=0,
        source_offset=1,
        original_key=None,
        original_value=b"x",
        original_headers=[(FRAME_ID_HEADER, frame_id.encode())],
        failed_at=1,
        service="scorer",
    )


def test_truth_round_trips_and_evaluation_counts_everything(tmp_path: Path) -> None:
    records = [
        TruthRecord("a", "c", "washer", NORMAL, None, None, "synthetic", 1),
        TruthRecord("b", "c", "washer", DEFECT, "spot", None, "synthetic", 2),
        TruthRecord("c", "c", "fabric", DEFECT, "scratch", None, "synthetic", 3),
        TruthRecord("d", "c", "fabric", NORMAL, None, None, "synthetic", 4),
        TruthRecord("e", "c", "fabric", NORMAL, None, "undecodable", "synthetic", 5),
    ]
    path = tmp_path / "truth.jsonl"
    with open(path, "w") as out:
        for record in records:
            write_truth_line(out, record)
    truth = read_truth(path)
    assert list(truth.values()) == records
    verdicts = [
        _verdict("a", "pass"),
        _verdict("b", "reject"),
        _verdict("c", "pass", "fabric", 30.0),
        _verdict("a", "pass"),
        _verdict("zzz", "pass"),
    ]
    result = evaluate(truth, verdicts, [_letter("e", "malformed")])
    assert (result.frames_sent, result.good_sent, result.bad_sent) == (5, 4, 1)
    assert result.duplicates == 1 and result.unexpected == 1
    assert result.missing == ["d"]
    assert result.dead_letters == {"malformed": 1} and result.dead_letters_matched == 1
    assert result.per_class["washer"].correct == 2
    assert result.per_class["fabric"].escaped == 1
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.latency_ms_p50 == pytest.approx(10.0)
    report = format_report(result)
    assert "washer" in report and "accuracy" in report


def test_bad_truth_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text('{"frame_id": "a"}\n')
    with pytest.raises(ValueError, match=r"truth\.jsonl:1"):
        read_truth(path)


@pytest.mark.parametrize("encoding", ["jpeg", "png", "raw8"])
def test_synthetic_frames_come_at_a_cameras_size_and_encoding(encoding: str) -> None:
    from shared.messages.pixels import decode_pixels

    sample = SampleSpec("washer", DEFECT, "spot", seed=3)
    data, sent_as = sample_image(sample, size=96, frame_size=(400, 300), encoding=encoding, jpeg_quality=90)
    assert sent_as == encoding
    pixels = decode_pixels(data, encoding, 400, 300)
    assert pixels.shape == (300, 400, 3)
    again, _ = sample_image(sample, size=96, frame_size=(400, 300), encoding=encoding, jpeg_quality=90)
    assert again == data  # the same sample is the same frame (seeded noise)
    if encoding == "raw8":
        assert len(data) == 400 * 300
