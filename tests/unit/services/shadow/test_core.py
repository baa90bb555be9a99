"""The shadow comparison: agreement, changed decisions, escapes and false rejects on labelled frames."""

from __future__ import annotations

from typing import Any

from services.shadow.core import Candidate, Comparison, percentiles
from tests.support.feedback import judgement
from tests.support.messages import T0, verdict

CANDIDATE = Candidate("m-new", "ab" * 32, "models/m-new")


def _comparison(pairs: list[tuple[str, str, str]], *, late: frozenset[str] = frozenset()) -> Comparison:
    """Frames ``(id, serving decision, candidate decision)``; serving verdicts from model m-old."""
    comparison = Comparison(changed_listed=2)
    for frame_id, serving, candidate in pairs:
        assert comparison.add_candidate(verdict(frame_id, candidate, model_version="m-new"), scoring_ms=10.0)
        assert comparison.wants(frame_id)
        assert comparison.add_serving(
            verdict(frame_id, serving, model_version="m-old", late=frame_id in late, latency_ms=40.0)
        )
        assert not comparison.wants(frame_id)
    return comparison


def _report(comparison: Comparison, labels: dict[str, str], excluded: tuple[str, ...] = ()) -> dict[str, Any]:
    feedback = {f: judgement(verdict(f), label) for f, label in labels.items()}
    return comparison.report(
        feedback,
        candidate=CANDIDATE,
        window={"mode": "replay"},
        run_id="r1",
        generated_at_ns=T0,
        excluded=excluded,
    )


def test_agreement_changes_escapes_and_false_rejects() -> None:
    comparison = _comparison(
        [
            ("a", "pass", "pass"),  # agreed normal
            ("b", "pass", "reject"),  # an escape the candidate catches (labelled defect)
            ("c", "pass", "reject"),  # an added reject, nobody said defect
            ("d", "reject", "pass"),  # a false reject the candidate fixes (labelled good)
            ("e", "pass", "pass"),  # an escape both make (labelled defect)
            ("f", "review", "review"),
        ]
    )
    report = _report(comparison, {"b": "defect", "d": "good", "e": "defect"})
    assert report["frames"] == {
        "scored": 6,
        "bad": 0,
        "duplicates": 0,
        "without_serving_verdict": 0,
        "serving_late": 0,
        "serving_duplicates": 0,
        "compared": 6,
    }
    assert report["agreement"] == round(3 / 6, 4)
    assert report["changes"] == {"pass->reject": 2, "reject->pass": 1}
    assert report["changed_frames_total"] == 3 and len(report["changed_frames"]) == 2  # listed: capped
    assert report["changed_frames"][0]["frame_id"] == "b" and report["changed_frames"][0]["label"] == "defect"
    assert report["labels"] == {"defects": 2, "goods": 1, "excluded_trained": 0}
    serving, candidate = report["outcomes"]["serving"], report["outcomes"]["candidate"]
    assert (serving["escapes"], serving["escape_rate"]) == (2, 1.0)
    assert (candidate["escapes"], candidate["escape_rate"]) == (1, 0.5)
    assert (serving["false_rejects"], serving["false_reject_rate"]) == (1, 1.0)
    assert (candidate["false_rejects"], candidate["false_reject_rate"]) == (0, 0.0)
    assert report["added_rejects"] == {"count": 1, "rate": round(1 / 6, 4)}
    assert report["serving_versions"] == {"m-old": 6}
    assert report["by_class"]["washer"]["compared"] == 6
    assert report["candidate"] == {"model_version": "m-new", "sha256": "ab" * 32, "path": "models/m-new"}
    latency = report["latency_ms"]
    assert latency["candidate_scoring_per_frame"]["p50"] == 10.0
    assert latency["serving_end_to_end"]["p95"] == 40.0
    assert (
        latency["candidate_end_to_end"] is None
    )  # a replay: the candidate's capture-to-verdict means nothing


def test_late_serving_verdicts_frames_without_one_and_trained_frames_are_not_graded() -> None:
    comparison = _comparison([("a", "reject", "pass"), ("b", "pass", "reject")], late=frozenset({"a"}))
    assert comparison.add_candidate(verdict("c", "pass"), scoring_ms=1.0)
    assert not comparison.add_candidate(verdict("c", "pass"), scoring_ms=1.0)  # read twice
    assert not comparison.add_serving(verdict("zzz", "pass"))  # a frame the candidate did not score
    assert not comparison.add_serving(verdict("b", "pass"))  # a second serving verdict
    report = _report(comparison, {"a": "good", "b": "defect"}, excluded=("b",))
    frames = report["frames"]
    assert frames["compared"] == 1 and frames["serving_late"] == 1 and frames["without_serving_verdict"] == 1
    assert frames["duplicates"] == 1 and frames["serving_duplicates"] == 1
    assert report["labels"] == {"defects": 0, "goods": 0, "excluded_trained": 1}
    assert report["outcomes"]["serving"]["escape_rate"] is None
    assert report["added_rejects"]["count"] == 1  # b's label was left out: nobody (counted) said defect


def test_nothing_compared_gives_no_rates() -> None:
    report = _report(Comparison(), {})
    assert report["agreement"] is None and report["frames"]["compared"] == 0
    assert report["added_rejects"] == {"count": 0, "rate": None}
    assert report["latency_ms"]["candidate_scoring_per_frame"] is None


def test_percentiles_by_nearest_rank() -> None:
    stats = percentiles([float(v) for v in range(1, 101)])
    assert stats == {"count": 100, "p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) is None
