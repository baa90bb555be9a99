"""Promotion criteria, the rollback target and refit proposals: plain functions on plain data."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.shadow.core import Candidate, Comparison
from services.shadow.promotion import (
    Criteria,
    PromotionRefused,
    check_report,
    promotion_reason,
    refit_evidence,
    refit_proposals,
    rollback_target,
)
from shared.settings import PromotionSettings
from tests.support.feedback import judgement
from tests.support.messages import T0, history_entry, verdict

SHA = "ab" * 32
HOUR_NS = 3600 * 10**9


def _report() -> dict[str, Any]:
    """A candidate that catches 2 of the serving model's 3 escapes on 100 frames, nothing else changed."""
    comparison = Comparison()
    labels = {}
    for i in range(100):
        frame_id = f"f{i}"
        serving = candidate = "pass"
        if i < 3:
            labels[frame_id] = "defect"
            candidate = "reject" if i < 2 else "pass"
        elif i < 8:
            labels[frame_id] = "good"
        comparison.add_candidate(verdict(frame_id, candidate, model_version="m-new"), 5.0)
        comparison.add_serving(verdict(frame_id, serving, model_version="m-old"))
    feedback = {f: judgement(verdict(f), label) for f, label in labels.items()}
    return comparison.report(
        feedback,
        candidate=Candidate("m-new", SHA, "models/m-new"),
        window={"mode": "replay"},
        run_id="r1",
        generated_at_ns=T0,
    )


CRITERIA = Criteria(min_frames_compared=100, min_agreement=0.95, min_labelled_defects=3)


def _checks(report: dict[str, Any], criteria: Criteria = CRITERIA, **changes: Any) -> dict[str, bool]:
    options = {"model_version": "m-new", "sha256": SHA, "serving_version": "m-old", "now_ns": T0 + HOUR_NS}
    options.update(changes)
    return {c.name: c.passed for c in check_report(report, criteria, **options)}


def test_a_better_candidate_passes_every_check() -> None:
    checks = check_report(
        _report(), CRITERIA, model_version="m-new", sha256=SHA, serving_version="m-old", now_ns=T0 + HOUR_NS
    )
    assert [c.name for c in checks] == [
        "candidate",
        "report_age",
        "baseline",
        "frames_compared",
        "agreement",
        "escape_rate",
        "false_reject_rate",
        "added_rejects",
    ]
    assert all(c.passed for c in checks), checks
    escape = next(c for c in checks if c.name == "escape_rate")
    assert "0.3333 vs serving 1.0000 on 3 labelled defects" in escape.detail


def test_a_report_about_another_model_or_digest_is_refused() -> None:
    assert not _checks(_report(), model_version="m-other")["candidate"]
    assert not _checks(_report(), sha256="cd" * 32)["candidate"]


def test_stale_reports_and_a_changed_baseline_are_refused() -> None:
    assert not _checks(_report(), now_ns=T0 + 73 * HOUR_NS)["report_age"]
    assert not _checks(_report(), now_ns=T0 - HOUR_NS)["report_age"]  # from the future
    assert not _checks(_report(), serving_version="m-rolled-out-since")["baseline"]
    assert _checks(_report(), serving_version=None)["baseline"]  # nothing announced yet: not checked


def test_each_figure_must_meet_its_criterion() -> None:
    assert not _checks(_report(), Criteria(min_frames_compared=101))["frames_compared"]
    assert not _checks(_report(), Criteria(min_frames_compared=1, min_agreement=0.99))["agreement"]
    assert not _checks(_report(), Criteria(min_frames_compared=1, min_labelled_defects=4))["escape_rate"]
    assert not _checks(_report(), Criteria(min_frames_compared=1, min_labelled_goods=6))["false_reject_rate"]
    worse = _report()
    worse["outcomes"]["candidate"]["false_reject_rate"] = 0.2
    assert not _checks(worse, CRITERIA)["false_reject_rate"]
    assert _checks(worse, Criteria(min_frames_compared=1, max_false_reject_rate_increase=0.25))[
        "false_reject_rate"
    ]
    noisy = _report()
    noisy["added_rejects"]["rate"] = 0.05
    assert not _checks(noisy)["added_rejects"]


def test_labels_missing_from_the_window_are_not_compared_unless_required() -> None:
    report = _report()
    report["labels"]["defects"] = 0
    report["outcomes"]["candidate"]["escape_rate"] = None
    assert _checks(report, Criteria(min_frames_compared=1))["escape_rate"]
    assert not _checks(report, Criteria(min_frames_compared=1, min_labelled_defects=1))["escape_rate"]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r.update(report_format=2),
        lambda r: r.pop("frames"),
        lambda r: r["frames"].update(compared="many"),
        lambda r: r.update(generated_at="yesterday"),
        lambda r: r.update(serving_versions=["m-old"]),
    ],
)
def test_a_file_that_is_not_a_shadow_report_is_refused(mangle: Any) -> None:
    report = copy.deepcopy(_report())
    mangle(report)
    with pytest.raises(PromotionRefused):
        _checks(report)


def test_the_history_reason_states_the_figures() -> None:
    assert promotion_reason(_report()) == (
        "shadow run r1: 100 frames compared, agreement 0.9800; escape rate 1.0000 -> 0.3333 "
        "on 3 labelled defects"
    )


def test_criteria_come_from_the_settings() -> None:
    settings = PromotionSettings(min_frames_compared=7, min_agreement=0.5)
    criteria = Criteria.from_settings(settings)
    assert criteria.min_frames_compared == 7 and criteria.min_agreement == 0.5
    assert criteria.max_report_age_h == settings.max_report_age_h


# ---- rollback -----------------------------------------------------------------------------------


def test_rollback_goes_to_the_model_announced_before_the_newest() -> None:
    history = [
        history_entry("a", announced_at=1),
        history_entry("b", announced_at=2, action="promote"),
        history_entry("b", announced_at=3),  # announced again: still b
    ]
    current, target = rollback_target(history)
    assert current.announcement.announced_at == 3 and target.announcement.model_version == "a"
    # After the rollback, the previous model is b again (a rollback of the rollback).
    history.append(history_entry("a", announced_at=4, action="rollback"))
    assert rollback_target(history)[1].announcement.model_version == "b"
    # Order by time, not by the order written.
    assert rollback_target(list(reversed(history)))[0].announcement.announced_at == 4


def test_rollback_to_a_named_version_and_its_refusals() -> None:
    history = [history_entry("a", announced_at=1), history_entry("b", announced_at=2)]
    assert rollback_target(history, "a")[1].announcement.model_version == "a"
    for bad in ("b", "zzz"):
        with pytest.raises(PromotionRefused):
            rollback_target(history, bad)
    with pytest.raises(PromotionRefused, match="empty"):
        rollback_target([])
    with pytest.raises(PromotionRefused, match="nothing to roll back to"):
        rollback_target([history_entry("a", announced_at=1), history_entry("a", announced_at=2)])


# ---- refit proposals ----------------------------------------------------------------------------


def test_refits_are_proposed_from_judgements_of_the_serving_model() -> None:
    feedback = [judgement(verdict(f"g{i}", model_version="m1"), "good") for i in range(3)]
    feedback += [judgement(verdict(f"old{i}", model_version="m0"), "good") for i in range(5)]  # another model
    feedback += [judgement(verdict(f"d{i}", "pass", model_version="m1"), "defect") for i in range(2)]
    feedback += [judgement(verdict("u", model_version="m1", product="unknown"), "good")]  # no class
    feedback += [judgement(verdict("p", model_version="m1", product="pcb"), "good")]
    evidence = refit_evidence(feedback, "m1", {"washer": 2})
    assert sorted(evidence) == ["pcb", "washer"]
    washer = evidence["washer"]
    assert (washer.confirmed_normals, washer.staged_normals, washer.labelled_defects) == (3, 2, 2)
    proposals = refit_proposals(evidence, min_normals=5, min_defects=0)
    assert [p.product_class for p in proposals] == ["washer"]
    assert "5 confirmed normals (3 judged good, 2 staged" in proposals[0].why
    assert [p.product_class for p in refit_proposals(evidence, min_normals=6, min_defects=2)] == ["washer"]
    assert refit_proposals(evidence, min_normals=6, min_defects=3) == []
    # The serving model unknown: every judgement counts.
    assert refit_evidence(feedback, None)["washer"].confirmed_normals == 8
