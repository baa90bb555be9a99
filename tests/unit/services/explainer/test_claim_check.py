"""A claim-checked defect event in the explainer's facts: pictures from the verified bytes only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from services.explainer.facts import read_facts
from shared.frames_store import ClaimStore, image_of
from shared.limits import MAX_IMAGE_BYTES, MAX_PIXELS
from tests.support.messages import defect_event


def test_pictures_come_from_the_fetched_bytes_and_without_them_the_problem_is_named(tmp_path: Path) -> None:
    inline = defect_event("f-1", size=(320, 240), region=(200, 20, 40, 30))
    assert inline.image is not None
    store = ClaimStore(tmp_path)
    ref = store.put("f-1", inline.image, inline.encoding)
    event = dataclasses.replace(inline, image=None, image_ref=ref)
    image = image_of(event, store, max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_PIXELS)
    facts = read_facts(event, image, frame_max_side=256, crop_max_side=128)
    expected = read_facts(inline, frame_max_side=256, crop_max_side=128)
    assert facts.pictures is not None and facts.image_problem == ""
    assert facts.pictures == expected.pictures and facts.heat_shares == expected.heat_shares
    unfetched = read_facts(event, frame_max_side=256, crop_max_side=128)
    assert unfetched.pictures is None and unfetched.image_problem == "no_claim_store"
