import pytest

from services.explainer.answer import response_format
from services.explainer.facts import read_facts
from services.explainer.pictures import Reference, make_pictures
from services.explainer.prompt import build_messages
from shared.errors import ConfigError
from shared.messages.anomaly_map import decode_anomaly_map
from shared.messages.pixels import decode_pixels
from shared.settings import EgressPolicy
from tests.support.messages import defect_event


def test_prompt_full_egress_carries_references_frame_overlay_and_crop() -> None:
    event = defect_event()
    facts = read_facts(event, frame_max_side=1024, crop_max_side=512)
    pictures = make_pictures(
        decode_pixels(event.image, "jpeg", 160, 120),
        decode_anomaly_map(event.anomaly_map_png),
        event.verdict.regions[0],  # (100, 10, 30, 8)
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
    with pytest.raises(ConfigError, match="none"):
        build_messages(
            facts, pictures, egress=EgressPolicy.NONE, vocabulary=[], language="en", structured=True
        )
    assert response_format(False) == {"type": "json_object"}
