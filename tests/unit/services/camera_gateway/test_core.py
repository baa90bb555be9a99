"""The gateway's plain logic: complete files, frames from files and pictures, sampling, readiness,
ledger records."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.camera_gateway.core import (
    CameraIdentity,
    CommittedFile,
    FileSnapshot,
    Outgoing,
    ReadinessTracker,
    Sampler,
    committed_in,
    encode_pixels,
    file_frame,
    image_info,
    is_complete,
    ledger_records,
    transactional_id_for,
    wire_image,
)
from shared.errors import ImageError
from shared.messages.codec import decode, encode
from shared.messages.pixels import decode_pixels
from shared.messages.schemas import CameraLedger, Frame
from tests.support.images import image_bytes

CAMERA = CameraIdentity("cam-1", "station-1", "line-1", product="washer", deadline_ms=500)


def snapshot(data: bytes, name: str = "a.png", mtime_ns: int = 1_700_000_000_000_000_000) -> FileSnapshot:
    return FileSnapshot(Path("/hot") / name, name, len(data), mtime_ns, data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (its pixel data is empty)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", b"") + _chunk(b"IEND", b"")


# ---- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_file_is_complete_only_with_its_end_marker(fmt: str) -> None:
    data = image_bytes(fmt)
    assert is_complete(data)
    assert not is_complete(data[: len(data) // 2])
    assert not is_complete(data[:-1])


def test_a_jpeg_padded_with_zeros_after_its_end_is_complete() -> None:
    assert is_complete(image_bytes("JPEG") + b"\0" * 100)


def test_jpeg_and_png_go_out_unchanged_with_their_size() -> None:
    for fmt, encoding in (("PNG", "png"), ("JPEG", "jpeg")):
        data = image_bytes(fmt, size=(80, 30))
        info = image_info(data)
        assert (info.width, info.height) == (80, 30)
        assert wire_image(data, info) == (data, encoding)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_bmp_and_tiff_become_lossless_png(fmt: str) -> None:
    data = image_bytes(fmt, size=(33, 17), seed=3)
    image, encoding = wire_image(data, image_info(data))
    assert encoding == "png"
    original = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_pixels(image, "png", 33, 17), original)


def test_unusable_files_are_refused_with_a_reason() -> None:
    with pytest.raises(ImageError) as empty:
        image_info(b"")
    assert empty.value.reason == "empty"
    with pytest.raises(ImageError) as noise:
        image_info(b"not an image at all" * 10)
    assert noise.value.reason == "corrupt"
    with pytest.raises(ImageError) as gif:
        image_info(image_bytes("GIF"))
    assert gif.value.reason == "unsupported_format"
    with pytest.raises(ImageError) as huge:
        image_info(png_header_only(20_000, 10))  # over the per-side limit, refused from the header
    assert huge.value.reason == "too_large"
    with pytest.raises(ImageError) as many:
        image_info(png_header_only(9000, 8000))  # 72 MP: over even a claim-checked frame's limit
    assert many.value.reason == "too_large"


def test_identity_and_frame_id_follow_the_file_not_the_moment() -> None:
    data = image_bytes()
    a = snapshot(data)
    assert a.identity == snapshot(data).identity
    assert (
        len(
            {
                a.identity,
                snapshot(data, "b.png").identity,
                snapshot(data, mtime_ns=1).identity,
                snapshot(image_bytes(seed=1)).identity,
            }
        )
        == 4
    )
    assert file_frame(CAMERA, a).frame_id == file_frame(CAMERA, snapshot(data)).frame_id


def test_a_file_frame_carries_the_camera_the_capture_time_and_the_file_name() -> None:
    data = image_bytes("JPEG", size=(40, 20))
    frame = file_frame(CAMERA, snapshot(data, "part-0042.jpg", mtime_ns=123_456_789))
    assert frame.frame_id.startswith("cam-1-")
    assert (frame.camera_id, frame.station_id, frame.line_id) == ("cam-1", "station-1", "line-1")
    assert (frame.product, frame.deadline_ms) == ("washer", 500)
    assert (frame.captured_at, frame.encoding, frame.width, frame.height) == (123_456_789, "jpeg", 40, 20)
    assert frame.image == data
    assert frame.attributes == {"source": "folder", "file": "part-0042.jpg"}
    assert decode(encode(frame), Frame) == frame


# ---- pictures ------------------------------------------------------------------------------------


def test_pictures_are_encoded_as_asked() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    raw, encoding = encode_pixels(rgb, "raw-rgb", 90)
    assert encoding == "raw-rgb" and np.array_equal(decode_pixels(raw, "raw-rgb", 32, 24), rgb)
    png, _ = encode_pixels(rgb, "png", 90)
    assert np.array_equal(decode_pixels(png, "png", 32, 24), rgb)
    gray, _ = encode_pixels(rgb[:, :, 0], "raw8", 90)
    assert len(gray) == 32 * 24
    low, _ = encode_pixels(rgb, "jpeg", 10)
    high, _ = encode_pixels(rgb, "jpeg", 95)
    assert len(low) < len(high) and decode_pixels(high, "jpeg", 32, 24).shape == (24, 32, 3)
    with pytest.raises(ImageError):
        encode_pixels(rgb.astype(np.float32), "jpeg", 90)


# ---- sampling ------------------------------------------------------------------------------------


def test_a_rate_takes_one_frame_per_period_without_bursts_after_a_stall() -> None:
    sampler = Sampler(fps=2.0)
    taken = [t / 10 for t in range(0, 31) if sampler.take(t / 10)[0]]  # 10 frames/s for 3 s
    assert taken == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert sampler.take(10.0)[0]  # after a 7 s stall: one frame, then the rate again
    assert not sampler.take(10.1)[0] and not sampler.take(10.4)[0] and sampler.take(10.5)[0]


def test_without_rate_or_trigger_every_frame_is_taken() -> None:
    sampler = Sampler()
    assert all(sampler.take(t)[0] for t in (0.0, 0.001, 0.002))


def test_a_trigger_takes_the_first_frame_at_or_after_it_once() -> None:
    sampler = Sampler(triggered=True)
    assert sampler.take(1.0) == (False, None)
    assert sampler.trigger(2.0, "part-7")
    assert sampler.take(1.9) == (False, None)  # decoded before the trigger: not the part
    assert sampler.take(2.05) == (True, "part-7")
    assert sampler.take(2.1) == (False, None)


def test_triggers_beyond_the_waiting_limit_are_refused() -> None:
    sampler = Sampler(triggered=True, max_pending=2)
    assert sampler.trigger(1.0) and sampler.trigger(1.0)
    assert not sampler.trigger(1.0)
    assert sampler.take(1.0)[0] and sampler.take(1.0)[0] and not sampler.take(1.0)[0]


# ---- readiness -----------------------------------------------------------------------------------


def test_a_file_is_ready_once_unchanged_for_the_settle_time() -> None:
    stats = {Path("a.png"): (10, 1)}
    tracker = ReadinessTracker(settle_s=1.0, incomplete_after_s=5.0)
    tracker.seen(Path("a.png"), 10, 1, now=0.0)
    assert tracker.poll(0.5, stats.get).ready == []
    stats[Path("a.png")] = (20, 2)  # still growing: the clock starts again
    assert tracker.poll(0.9, stats.get).ready == []
    assert tracker.poll(1.8, stats.get).ready == []
    assert tracker.poll(2.0, stats.get).ready == [Path("a.png")]


def test_a_file_closed_after_writing_is_ready_at_once() -> None:
    tracker = ReadinessTracker(settle_s=10.0, incomplete_after_s=5.0)
    tracker.seen(Path("a.png"), 10, 1, now=0.0, closed=True)
    assert tracker.poll(0.0, {Path("a.png"): (10, 1)}.get).ready == [Path("a.png")]


def test_an_incomplete_file_waits_for_a_change_and_is_given_up_when_stuck() -> None:
    stats = {Path("a.png"): (10, 1)}
    tracker = ReadinessTracker(settle_s=0.0, incomplete_after_s=5.0)
    tracker.seen(Path("a.png"), 10, 1, now=0.0)
    assert tracker.poll(0.1, stats.get).ready == [Path("a.png")]
    tracker.incomplete(Path("a.png"), 0.1)
    result = tracker.poll(2.0, stats.get)
    assert result.ready == [] and result.stuck == []
    assert tracker.poll(5.0, stats.get).stuck == [Path("a.png")]
    stats[Path("a.png")] = (30, 2)  # the writer came back: a new chance
    tracker.poll(5.1, stats.get)
    assert tracker.poll(5.2, stats.get).ready == [Path("a.png")]


def test_files_that_vanish_are_forgotten_and_ready_files_come_oldest_first() -> None:
    stats = {Path("b.png"): (1, 5), Path("a.png"): (1, 9), Path("c.png"): (1, 1)}
    tracker = ReadinessTracker(settle_s=0.0, incomplete_after_s=5.0)
    for path, (size, mtime) in stats.items():
        tracker.seen(path, size, mtime, now=0.0)
    del stats[Path("b.png")]
    assert tracker.poll(1.0, stats.get).ready == [Path("c.png"), Path("a.png")]
    assert len(tracker) == 2


# ---- ledger --------------------------------------------------------------------------------------


def outgoing(camera: str, frame_id: str, name: str | None) -> Outgoing:
    file = CommittedFile(Path("/hot"), name, "ab" * 32, 1, 1) if name else None
    return Outgoing(camera, frame_id, b"x", [], file)


def test_each_camera_of_a_transaction_gets_one_ledger_record_of_its_files() -> None:
    batch = [outgoing("c1", "f1", "a.png"), outgoing("c2", "f2", None), outgoing("c1", "f3", "b.png")]
    records = {r.camera_id: r for r in ledger_records(batch, committed_at=42)}
    assert [(f.name, f.frame_id) for f in records["c1"].files] == [("a.png", "f1"), ("b.png", "f3")]
    assert records["c2"].files == [] and records["c2"].committed_at == 42
    for record in records.values():
        assert decode(encode(record), CameraLedger) == record


def test_a_transaction_is_committed_when_its_stamp_is_every_camera_s_last_record() -> None:
    batch = [outgoing("c1", "f1", "a.png"), outgoing("c2", "f2", None)]
    ledger = {r.camera_id: r for r in ledger_records(batch, committed_at=7)}
    assert committed_in(batch, ledger, 7)
    assert not committed_in(batch, ledger, 8)
    assert not committed_in(batch, {"c1": ledger["c1"]}, 7)
    assert not committed_in([], ledger, 7)


def test_a_ledger_identity_must_be_hex() -> None:
    from shared.errors import MessageError
    from shared.messages.schemas import LedgerFile

    record = CameraLedger("c1", [LedgerFile("a.png", "Z" * 64, "f1")], 1)
    with pytest.raises(MessageError, match="identity"):
        encode(record)


def test_the_default_transactional_id_depends_only_on_the_set_of_cameras() -> None:
    assert transactional_id_for(["b", "a"]) == transactional_id_for(["a", "b"])
    assert transactional_id_for(["a"]) != transactional_id_for(["a", "b"])
    assert transactional_id_for(["a"]).startswith("lineguard-camera-gateway-")
