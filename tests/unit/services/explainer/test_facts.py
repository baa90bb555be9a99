"""The first step: an event's verdict and pictures, decoded with the shared bounded decoders."""

import dataclasses

import numpy as np
import pytest

from services.explainer.facts import read_facts
from shared.engine.config import Decision
from shared.errors import ImageError
from shared.messages.anomaly_map import decode_anomaly_map
from shared.messages.pixels import decode_pixels
from tests.support.images import png_bytes
from tests.support.messages import defect_event


def test_event_images_are_decoded_with_bounds() -> None:
    raw = bytes(range(256)) * 3  # 16x16x3
    assert decode_pixels(raw, "raw-rgb", 16, 16).shape == (16, 16, 3)
    assert decode_pixels(raw[:256], "raw8", 16, 16).shape == (16, 16, 3)
    with pytest.raises(ImageError) as err:
        decode_pixels(raw, "raw-rgb", 16, 17)
    assert err.value.reason == "bad_dimensions"
    with pytest.raises(ImageError):
        decode_pixels(b"GIF89a....", "gif", None, None)
    with pytest.raises(ImageError) as err:
        decode_anomaly_map(b"\x89PNG\r\n\x1a\nbroken")
    assert err.value.reason == "corrupt"
    assert decode_anomaly_map(png_bytes(np.zeros((4, 5), np.uint8))).shape == (4, 5)


def test_facts_keep_the_wire_verdict_and_add_what_the_pictures_show() -> None:
    event = defect_event("f-facts", size=(160, 120), region=(100, 10, 30, 8))
    facts = read_facts(event, frame_max_side=64, crop_max_side=32)
    assert facts.verdict is event.verdict and facts.decision is Decision.REJECT
    assert facts.positions == ("upper right",)  # the centre of x 100..130, y 10..18 on 160 x 120
    assert facts.pictures is not None and max(facts.pictures.width, facts.pictures.height) == 160
    shares = facts.heat_shares
    assert shares is not None and shares["upper right"] == pytest.approx(
        24 / 30
    )  # x 100..130 over cells split at 106.7
    assert shares["upper middle"] == pytest.approx(6 / 30) and sum(shares.values()) == pytest.approx(1.0)
    assert facts.image_problem == ""


def test_an_undecodable_picture_is_a_fact_not_an_error() -> None:
    broken = dataclasses.replace(defect_event("f-broken"), anomaly_map_png=b"\x89PNG\r\n\x1a\nbroken")
    facts = read_facts(broken, frame_max_side=1024, crop_max_side=512)
    assert facts.pictures is None and facts.heat_shares is None and facts.image_problem == "corrupt"
    assert facts.positions == ("upper right",)  # the verdict still places its regions
