"""Where judged frames go in the labelled set, their masks, and the sample of confirmed normals."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from services.labels.core import (
    BottomK,
    Placement,
    Skipped,
    is_normal_candidate,
    latest_feedback,
    place,
    region_mask,
    regions_fit,
    type_folder,
)
from shared.messages.schemas import Feedback, RegionMsg
from tests.support.messages import defect_event


def judged(
    frame_id: str = "f-1", label: str = "defect", defect_type: str = "scratch", **changes: object
) -> Feedback:
    region = RegionMsg(x=2, y=3, width=4, height=5, score=0.0, area_fraction=0.01)
    feedback = Feedback(
        frame_id=frame_id, line_id="l", station_id="s", camera_id="c", product_class="washer", label=label,
        defect_type=defect_type if label == "defect" else "", regions=[region] if label == "defect" else [],
        width=16, height=12, decision="pass", score=0.3, model_version="m1", captured_at=1, operator="Ana",
        authenticated_by="token", submitted_at=2, comment="",
    )  # fmt: skip
    return dataclasses.replace(feedback, **changes)  # type: ignore[arg-type]


def test_type_folders_are_safe_names() -> None:
    assert type_folder("missing part") == "missing_part"
    assert type_folder("Crack") == "crack"
    assert type_folder("") == "defect" and type_folder("../..") == "defect"
    assert type_folder("good") == "defect_good"


def test_defects_go_to_test_with_masks_and_goods_to_train() -> None:
    defect = place(judged())
    assert isinstance(defect, Placement)
    assert defect.image == "washer/test/scratch/f-1.png"
    assert defect.mask == "washer/ground_truth/scratch/f-1_mask.png"
    no_region = place(judged(regions=[], defect_type=""))
    assert isinstance(no_region, Placement) and no_region.image == "washer/test/defect/f-1.png"
    assert no_region.mask is None
    good = place(judged(label="good"))
    assert isinstance(good, Placement) and good.image == "washer/train/good/f-1.png" and good.mask is None
    unknown = place(judged(product_class="unknown"))
    assert unknown == Skipped("f-1", "no_class")
    odd = place(judged(frame_id="../../etc/passwd"))
    assert isinstance(odd, Placement) and ".." not in odd.image.split("/")


def test_the_latest_judgement_counts_and_a_tombstone_withdraws_it() -> None:
    first, second, other = judged("a"), judged("a", label="good"), judged("b")
    latest = latest_feedback([(b"a", first), (b"b", other), (b"a", second), (b"b", None)])
    assert latest == {"a": second}


def test_masks_cover_the_regions_clipped_to_the_frame() -> None:
    regions = [
        RegionMsg(x=1, y=1, width=2, height=2, score=0.0, area_fraction=0.0),
        RegionMsg(x=6, y=3, width=10, height=10, score=0.0, area_fraction=0.0),
    ]
    mask = region_mask(regions, 8, 5)
    assert mask.shape == (5, 8) and set(np.unique(mask)) == {0, 255}
    assert mask[1:3, 1:3].all() and mask[3:, 6:].all() and int((mask > 0).sum()) == 4 + 4


def test_regions_must_fit_the_frame_found() -> None:
    feedback = judged()
    assert regions_fit(feedback, 16, 12)
    assert not regions_fit(feedback, 32, 24)  # judged on a frame of another size
    assert not regions_fit(dataclasses.replace(feedback, width=None, height=None), 5, 5)


def test_normal_candidates_are_on_time_passes_far_below_the_threshold() -> None:
    base = defect_event("n-1", product="washer", decision="pass", score=0.1).verdict
    assert is_normal_candidate(base, 0.2)
    assert not is_normal_candidate(dataclasses.replace(base, score=0.3), 0.2)
    assert not is_normal_candidate(dataclasses.replace(base, decision="reject"), 0.2)
    assert not is_normal_candidate(dataclasses.replace(base, late=True), 0.2)
    assert not is_normal_candidate(dataclasses.replace(base, model_version=""), 0.2)
    assert not is_normal_candidate(dataclasses.replace(base, product_class="unknown"), 0.2)


def test_the_sample_is_capped_per_class_and_independent_of_arrival_order() -> None:
    frames = [f"frame-{i}" for i in range(400)]

    def sample(order: list[str]) -> set[str]:
        sampler = BottomK(20)
        kept: set[str] = set()
        for frame_id in order:
            accepted, evicted = sampler.offer("washer", frame_id)
            if evicted:
                kept.discard(evicted)
            if accepted:
                kept.add(frame_id)
        assert sampler.counts() == {"washer": 20}
        return kept

    forwards = sample(frames)
    assert len(forwards) == 20 and forwards == sample(list(reversed(frames)))
    assert BottomK(3).offer("a", "x") == (True, None)
    halves = Counter(int(f.split("-")[1]) < 200 for f in forwards)  # spread over the stream, not its start
    assert halves[True] >= 4 and halves[False] >= 4
