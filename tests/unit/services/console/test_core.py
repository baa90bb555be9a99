"""The console's bounded memory and the feedback it builds."""

from __future__ import annotations

import dataclasses

import pytest

from services.console.core import (
    OTHER_CLASSES,
    ConsoleState,
    FeedbackForm,
    FeedbackRefused,
    StateLimits,
    build_feedback,
    defect_types,
)
from shared.errors import MessageError
from shared.messages.codec import decode, encode
from shared.messages.schemas import Feedback, ModelAnnouncement, RegionMsg, Verdict
from tests.support.messages import defect_event


def verdict(frame_id: str, station: str = "s1", product: str = "washer", decision: str = "pass") -> Verdict:
    return dataclasses.replace(
        defect_event(frame_id, station_id=station, product=product).verdict, decision=decision
    )


def test_each_station_keeps_a_capped_window_newest_first() -> None:
    state = ConsoleState(StateLimits(verdicts_per_station=3))
    for i in range(5):
        state.add_verdict(verdict(f"f{i}"))
    state.add_verdict(verdict("g0", station="s2"))
    stations = dict(state.stations())
    assert [v.frame_id for v in stations["s1"]] == ["f4", "f3", "f2"]
    assert [v.frame_id for v in stations["s2"]] == ["g0"]
    assert state.verdict("f0") is None and state.verdict("f4") is not None  # forgotten with its window


def test_the_least_recently_active_station_goes_past_the_limit() -> None:
    state = ConsoleState(StateLimits(stations_max=2))
    state.add_verdict(verdict("a", station="s1"))
    state.add_verdict(verdict("b", station="s2"))
    state.add_verdict(verdict("c", station="s1"))
    state.add_verdict(verdict("d", station="s3"))
    assert [name for name, _ in state.stations()] == ["s1", "s3"]
    assert state.verdict("b") is None


def test_counts_per_class_and_decision_without_double_counting_a_reread() -> None:
    state = ConsoleState(StateLimits(classes_max=2))
    for frame_id, product, decision in [
        ("1", "washer", "pass"), ("2", "washer", "reject"), ("3", "pcb", "review"),
        ("4", "fabric", "pass"), ("5", "marble", "error"),
    ]:  # fmt: skip
        assert state.add_verdict(verdict(frame_id, product=product, decision=decision))
    assert not state.add_verdict(verdict("2", product="washer", decision="reject"))  # read again
    counts = state.counts()
    assert counts["washer"] == {"pass": 1, "reject": 1, "review": 0, "error": 0}
    assert counts["pcb"]["review"] == 1
    assert counts[OTHER_CLASSES] == {"pass": 1, "reject": 0, "review": 0, "error": 1}


def test_evidence_is_capped_by_count_and_by_bytes() -> None:
    events = [defect_event(f"e{i}") for i in range(4)]
    one = len(events[0].image) + len(events[0].anomaly_map_png) + 4096
    state = ConsoleState(StateLimits(evidence_max=3, evidence_max_bytes=(1 << 20)))
    for event in events:
        state.add_evidence(event)
    assert [e.verdict.frame_id for e in state.recent_evidence(10)] == ["e3", "e2", "e1"]
    by_bytes = ConsoleState(StateLimits(evidence_max=100, evidence_max_bytes=2 * one + 10))
    for event in events:
        by_bytes.add_evidence(event)
    assert [e.verdict.frame_id for e in by_bytes.recent_evidence(10)] == ["e3", "e2"]
    tiny = ConsoleState(StateLimits(evidence_max_bytes=one - 1))
    assert not tiny.add_evidence(events[0])
    assert state.verdict("e2") is not None  # a held reject is found even without its verdict record


def test_live_pages_get_numbered_changes_or_a_reload_when_too_far_behind() -> None:
    state = ConsoleState(StateLimits(changes_kept=3))
    for i in range(2):
        state.add_verdict(verdict(f"f{i}"))
    changes = state.changes_since(0)
    assert changes is not None and [c.seq for c in changes] == [1, 2] and changes[0].kind == "verdict"
    assert changes[0].data["frame_id"] == "f0"
    for i in range(2, 6):
        state.add_verdict(verdict(f"f{i}"))
    assert state.changes_since(1) is None
    tail = state.changes_since(4)
    assert tail is not None and [c.seq for c in tail] == [5, 6]
    assert state.changes_since(6) == []


def test_model_history_newest_first_and_the_serving_model() -> None:
    state = ConsoleState(StateLimits(models_history=2))
    for i in range(3):
        state.add_announcement(
            ModelAnnouncement(model_version=f"m{i}", path=f"v{i}", announced_at=i + 1, sha256="a" * 64)
        )
    assert [a.model_version for a in state.model_history()] == ["m2", "m1"]
    assert state.serving_model is not None and state.serving_model.model_version == "m2"


# ---- feedback -------------------------------------------------------------------------------

TYPES = ["scratch", "missing part"]


def feedback_for(form: FeedbackForm, size: tuple[int, int] | None = (160, 120)) -> Feedback:
    event = defect_event("f-1", size=(160, 120), region=(100, 10, 30, 8))
    return build_feedback(
        form, event.verdict, size, TYPES, operator=" Ana ", authenticated_by="token", submitted_at=123
    )


def test_a_defect_with_type_chosen_and_drawn_regions() -> None:
    feedback = feedback_for(FeedbackForm("defect", "missing part", ("0", "0"), "1,2,3,4; 10,10,150,110"))
    assert feedback.operator == "Ana" and feedback.defect_type == "missing part"
    assert [(r.x, r.y, r.width, r.height) for r in feedback.regions] == [
        (100, 10, 30, 8),
        (1, 2, 3, 4),
        (10, 10, 150, 110),
    ]
    assert feedback.regions[0].score > 0 and feedback.regions[1].score == 0.0
    assert feedback.regions[1].area_fraction == pytest.approx(12 / (160 * 120))
    assert decode(encode(feedback), Feedback) == feedback  # the codec takes it as built


def test_good_is_a_false_reject_without_type_or_region() -> None:
    feedback = feedback_for(FeedbackForm("good"), size=None)
    assert feedback.label == "good" and feedback.regions == [] and feedback.width is None
    assert feedback.decision == "reject"
    with pytest.raises(FeedbackRefused, match="good frame"):
        feedback_for(FeedbackForm("good", drawn_regions="1,1,2,2"))


@pytest.mark.parametrize(
    ("form", "size", "reason"),
    [
        (FeedbackForm("bad"), (160, 120), "label"),
        (FeedbackForm("defect", "stain"), (160, 120), "not a defect type"),
        (FeedbackForm("defect", scorer_regions=("1",)), (160, 120), "no scorer region"),
        (FeedbackForm("defect", scorer_regions=("-1",)), (160, 120), "no scorer region"),
        (FeedbackForm("defect", drawn_regions="1,2,3"), (160, 120), "x,y,width,height"),
        (FeedbackForm("defect", drawn_regions="1,2,0,4"), (160, 120), "not inside"),
        (FeedbackForm("defect", drawn_regions="150,2,11,4"), (160, 120), "not inside"),
        (FeedbackForm("defect", drawn_regions="1,2,3,4"), None, "does not hold"),
        (FeedbackForm("defect", drawn_regions=";".join(["1,1,2,2"] * 17)), (160, 120), "at most 16"),
        (FeedbackForm("defect", comment="x\x00y"), (160, 120), "printable"),
    ],
)
def test_feedback_that_does_not_check_is_refused(
    form: FeedbackForm, size: tuple[int, int] | None, reason: str
) -> None:
    with pytest.raises(FeedbackRefused, match=reason):
        feedback_for(form, size)


def test_operator_names_are_bounded_and_printable() -> None:
    event = defect_event("f-1")
    for name in ("", "x" * 65, "ana\nbo"):
        with pytest.raises(FeedbackRefused):
            build_feedback(
                FeedbackForm("good"), event.verdict, None, TYPES, operator=name, authenticated_by="token",
                submitted_at=1,
            )  # fmt: skip


def test_a_form_field_given_twice_is_refused() -> None:
    with pytest.raises(FeedbackRefused, match="more than once"):
        FeedbackForm.from_fields({"label": ["good", "defect"]})
    form = FeedbackForm.from_fields({"label": ["defect"], "scorer_region": ["0", "1"]})
    assert form.scorer_regions == ("0", "1")


def test_defect_types_are_the_class_vocabulary_or_the_default() -> None:
    assert defect_types({"washer": ["scratch"]}, ["stain"], "washer") == ["scratch"]
    assert defect_types({"washer": ["scratch"]}, ["stain"], "pcb") == ["stain"]


def test_the_codec_refuses_feedback_that_contradicts_itself() -> None:
    good = feedback_for(FeedbackForm("good"))
    with pytest.raises(MessageError, match="good frame"):
        encode(dataclasses.replace(good, defect_type="scratch"))
    defect = feedback_for(FeedbackForm("defect", drawn_regions="1,1,2,2"))
    outside = RegionMsg(x=150, y=0, width=20, height=5, score=0.0, area_fraction=0.01)
    with pytest.raises(MessageError, match="outside the frame"):
        encode(dataclasses.replace(defect, regions=[outside]))
    with pytest.raises(MessageError, match="together"):
        encode(dataclasses.replace(defect, height=None))


def test_the_announcement_history_merges_with_the_models_topic_one_row_each() -> None:
    from tests.support.messages import announcement, history_entry

    state = ConsoleState(StateLimits(models_history=3))
    promoted = history_entry("m2", announced_at=20, action="promote", actor="ana", reason="shadow run r1")
    # The same announcement on `models` (compacted: only the last survives) and in the history.
    state.add_announcement(promoted.announcement)
    assert state.add_history(promoted) and not state.add_history(promoted)
    state.add_history(history_entry("m1", announced_at=10, actor="bo"))
    state.add_announcement(announcement("m0", announced_at=5))  # before the history was kept
    rows = [state.model_row(a) for a in state.model_history()]
    assert [(r["model_version"], r["action"], r["actor"]) for r in rows] == [
        ("m2", "promote", "ana"),
        ("m1", "announce", "bo"),
        ("m0", "", ""),
    ]
    assert rows[0]["reason"] == "shadow run r1" and rows[0]["key"] != rows[1]["key"]
    assert state.serving_model == promoted.announcement
    rolled_back = history_entry("m1", announced_at=30, action="rollback", previous_version="m2")
    state.add_history(rolled_back)
    assert [a.model_version for a in state.model_history()] == ["m1", "m2", "m1"]  # bounded to 3
    changes = state.changes_since(0)
    assert changes is not None and [c.kind for c in changes if c.kind in ("model", "history")] == [
        "model",
        "history",
        "history",
        "history",  # m0 on `models`: older than the serving m2, so no new serving model
        "history",
    ]
    assert changes[-1].data["action"] == "rollback" and changes[-1].data["previous_version"] == "m2"
