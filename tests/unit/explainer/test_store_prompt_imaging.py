import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.explainer.imaging import decode_anomaly_map, decode_frame, make_pictures, overlay
from services.explainer.processor import event_facts, report_message
from services.explainer.prompt import Reference, build_messages, response_format
from services.explainer.report import build_fallback_report
from services.explainer.store import ReportStore, safe_component
from shared.engine.images import ImageError
from shared.messages.codec import decode, encode
from shared.messages.schemas import Report
from shared.settings import EgressPolicy
from tests.support.defect_events import make_event, png_bytes


def test_safe_component_keeps_plain_ids_and_neutralises_the_rest() -> None:
    assert safe_component("frame-00017.a_b") == "frame-00017.a_b"
    for hostile in ("../../etc/passwd", "..", ".hidden", "a/b", "x" * 300, "카메라"):
        safe = safe_component(hostile)
        assert "/" not in safe and not safe.startswith(".") and len(safe) <= 100
    assert safe_component("a/b") != safe_component("a_b")  # no collisions through cleaning


def test_store_layout_lookup_and_publication_marker(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    event = make_event("f-1", captured_at=1_700_000_000_000_000_000, line_id="L/1", station_id="s1")
    facts = event_facts(event)
    doc = build_fallback_report(
        facts,
        reason="no_endpoint",
        vocabulary=[],
        severity_bands=(0.6, 0.8),
        language="en",
        created_at=1,
        egress="full",
    )
    assert store.lookup("f-1", "L/1", "s1", facts.captured_at) is None
    path = store.write(doc, json_text=__import__("json").dumps(doc.to_dict()), markdown="m", html="h")
    assert store.relative(path).startswith("2023-11-14/L_1-") and path.name == "f-1.json"
    stored = store.lookup("f-1", "L/1", "s1", facts.captured_at)
    assert stored is not None and stored.document == doc and not stored.published
    store.mark_published(doc)
    assert store.lookup("f-1", "L/1", "s1", facts.captured_at).published  # type: ignore[union-attr]
    assert store.reports() == [path]
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes leave no temporaries


def test_prompt_full_egress_carries_references_frame_overlay_and_crop() -> None:
    event = make_event()
    facts = event_facts(event)
    pictures = make_pictures(
        decode_frame(event.image, "jpeg", 160, 120),
        decode_anomaly_map(event.anomaly_map_png),
        (100, 10, 30, 8),
    )
    references = [Reference("normal", b"\xff\xd8ref")]
    messages = build_messages(
        facts,
        pictures,
        egress=EgressPolicy.FULL,
        vocabulary=["scratch", "dent"],
        language="ja",
        structured=True,
        references=references,
    )
    system, user = messages
    assert "Japanese" in system["content"] and "upper left" in system["content"]
    kinds = [part["type"] for part in user["content"]]
    assert kinds.count("image_url") == 4
    assert "normal washer" in user["content"][1]["text"]
    assert "scratch, dent" in user["content"][0]["text"]
    assert "JSON schema" not in user["content"][-1]["text"]  # structured outputs carry the schema
    crop_only = build_messages(
        facts,
        pictures,
        egress=EgressPolicy.CROP,
        vocabulary=[],
        language="en",
        structured=False,
        references=references,
    )
    parts = crop_only[1]["content"]
    assert [p["type"] for p in parts].count("image_url") == 1  # no references, no frame
    assert "JSON schema" in parts[-1]["text"]
    with pytest.raises(ValueError, match="none"):
        build_messages(
            facts, pictures, egress=EgressPolicy.NONE, vocabulary=[], language="en", structured=True
        )
    assert response_format(False) == {"type": "json_object"}


def test_pictures_crop_the_region_and_overlay_marks_the_heat() -> None:
    frame = np.full((100, 200, 3), 100, np.uint8)
    frame[40:50, 150:170] = 255
    heat = np.zeros((50, 100), np.uint8)  # half size: resized onto the frame
    heat[20:25, 75:85] = 255
    pictures = make_pictures(frame, heat, (150, 40, 20, 10), frame_max_side=100, crop_max_side=512)
    box = pictures.crop_box
    assert box.x0 <= 150 and box.x1 >= 170 and box.y0 <= 40 and box.y1 >= 50
    with Image.open(io.BytesIO(pictures.frame)) as image:
        assert image.size == (100, 50)  # downscaled to frame_max_side
    with Image.open(io.BytesIO(pictures.crop)) as image:
        assert image.size == (box.width, box.height)
    blended = overlay(frame, heat)
    assert blended.shape == frame.shape
    assert abs(int(blended[45, 160, 0]) - 255) < 60 and blended[45, 160, 2] < 200  # red over the hot spot
    assert np.abs(blended[5, 5].astype(int) - 100).max() < 40  # cool areas stay close to the part
    no_region = make_pictures(frame, heat, None)
    assert no_region.crop_box.x0 <= 160 <= no_region.crop_box.x1  # centred on the heat peak


def test_event_images_are_decoded_with_bounds() -> None:
    raw = bytes(range(256)) * 3  # 16x16x3
    assert decode_frame(raw, "raw-rgb", 16, 16).shape == (16, 16, 3)
    assert decode_frame(raw[:256], "raw8", 16, 16).shape == (16, 16, 3)
    with pytest.raises(ImageError) as err:
        decode_frame(raw, "raw-rgb", 16, 17)
    assert err.value.reason == "bad_dimensions"
    with pytest.raises(ImageError):
        decode_frame(b"GIF89a....", "gif", None, None)
    with pytest.raises(ImageError) as err:
        decode_anomaly_map(b"\x89PNG\r\n\x1a\nbroken")
    assert err.value.reason == "corrupt"
    assert decode_anomaly_map(png_bytes(np.zeros((4, 5), np.uint8))).shape == (4, 5)


def test_report_message_round_trips_through_the_codec(tmp_path: Path) -> None:
    facts = event_facts(make_event("f-msg"))
    doc = build_fallback_report(
        facts,
        reason="no_endpoint",
        vocabulary=["scratch"],
        severity_bands=(0.6, 0.8),
        language="ko",
        created_at=facts.decided_at + 1,
        egress="full",
    )
    doc.summary = "x" * 10_000  # clipped for the topic; the files keep it whole
    message = report_message(doc, "2023-11-14/line-1/station-1/f-msg.json")
    again = decode(encode(message), Report)
    assert again == message and len(again.summary) == 4096
    assert again.source == "fallback" and again.findings[0].defect_type == "scratch"
    assert again.confidence is None and again.language == "ko"
