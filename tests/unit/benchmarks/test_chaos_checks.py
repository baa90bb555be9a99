"""The chaos campaign's downstream and PLC accounts: each rule catches what it names, and a clean
line (including the PLC's safe-side fail-safes) passes."""

from __future__ import annotations

from benchmarks.chaos_checks import (
    PlcSample,
    changes_after,
    downstream_account,
    downstream_problems,
    fault_timeline,
    plc_account,
    repeated,
    seconds_to_next,
)
from services.plc_bridge.registers import DECISION_CODES, FAIL_SAFE, NO_DECISION

VERDICTS = {"f1": "pass", "f2": "reject", "f3": "review", "f4": "error"}
STATIONS = {
    "f1": ("st-0", "pass"),
    "f2": ("st-0", "reject"),
    "f3": ("st-1", "review"),
    "f5": ("st-1", "pass"),
}


def sample(station: str, decision: str, frame: str, passes: int = 0) -> PlcSample:
    return PlcSample(0.0, station, DECISION_CODES[decision], frame, passes)


def test_repeated_names_each_key_seen_twice_once() -> None:
    assert repeated(["a", "b", "a", "c", "a", "c"]) == ["a", "c"]
    assert repeated([]) == []


def test_one_event_and_one_report_per_reject_and_review_passes() -> None:
    result = downstream_account(VERDICTS, ["f2", "f3"], ["f3", "f2"], ["a1", "a2"])
    assert downstream_problems("chaos", result) == []
    assert (result["defect_verdicts"], result["defect_events"], result["reports"], result["alerts"]) == (
        2,
        2,
        2,
        2,
    )


def test_a_missing_event_or_report_is_named() -> None:
    result = downstream_account(VERDICTS, ["f2"], ["f3"], [])
    assert result["verdicts_without_defect_event"] == ["f3"]
    assert result["verdicts_without_report"] == ["f2"]
    assert result["verdicts_without_report_count"] == 1
    assert len(downstream_problems("chaos", result)) == 2


def test_duplicates_on_defects_reports_and_alerts_are_named() -> None:
    result = downstream_account(VERDICTS, ["f2", "f3", "f2"], ["f2", "f3", "f3"], ["a1", "a1", "a2"])
    assert result["duplicate_defect_events"] == ["f2"]
    assert result["duplicate_reports"] == ["f3"]
    assert result["duplicate_alerts"] == ["a1"]


def test_events_and_reports_for_a_pass_error_or_unknown_frame_are_named() -> None:
    result = downstream_account(VERDICTS, ["f2", "f3", "f1"], ["f2", "f3", "f4", "nope"], [])
    assert result["defect_events_without_verdict"] == ["f1"]
    assert result["reports_without_verdict"] == ["f4", "nope"]


def test_the_plc_showing_committed_decisions_and_safe_states_passes() -> None:
    samples = [
        sample("st-0", "pass", "f1"),
        sample("st-0", "reject", "f2"),
        sample("st-1", "review", "f3"),
        sample("st-1", FAIL_SAFE, "f5"),  # a late pass, decided safe: allowed
        sample("st-0", FAIL_SAFE, "f9"),  # fail-safe for a frame never committed: allowed
        sample("st-0", NO_DECISION, ""),
    ]
    result = plc_account(STATIONS, samples, {"st-0": 1, "st-1": 1})
    assert downstream_problems("chaos", result) == []
    assert result["plc_samples"] == 6
    assert result["plc_samples_by_decision"] == {
        "fail_safe": 2,
        "none": 1,
        "pass": 1,
        "reject": 1,
        "review": 1,
    }
    assert result["committed_pass_verdicts"] == {"st-0": 1, "st-1": 1}


def test_pass_shown_for_a_rejected_uncommitted_or_other_station_frame_fails() -> None:
    samples = [
        sample("st-0", "pass", "f2"),  # committed reject
        sample("st-0", "pass", "f9"),  # no committed verdict
        sample("st-0", "pass", "f5"),  # a pass, but of another station
    ]
    result = plc_account(STATIONS, samples, {})
    assert result["plc_pass_without_committed_pass_count"] == 3
    assert result["plc_pass_without_committed_pass"][0] == "st-0: f2 shown pass, committed reject"
    assert result["plc_pass_without_committed_pass"][1] == "st-0: f9 shown pass, committed nothing"
    assert downstream_problems("chaos", result)


def test_a_reject_shown_for_a_passed_frame_is_a_mismatch_not_a_pass_violation() -> None:
    result = plc_account(STATIONS, [sample("st-0", "reject", "f1")], {})
    assert result["plc_pass_without_committed_pass"] == []
    assert result["plc_decision_mismatches"] == ["st-0: f1 shown reject, committed pass"]


def test_a_pass_counter_above_the_committed_passes_fails() -> None:
    result = plc_account(STATIONS, [], {"st-0": 2, "st-1": 1, "st-2": 0})
    assert result["plc_pass_count_over_committed"] == {"st-0": {"plc": 2, "committed": 1}}
    assert downstream_problems("chaos", result) == ["chaos: plc_pass_count_over_committed: ['st-0']"]


def test_heartbeat_changes_and_the_time_to_the_next_output() -> None:
    samples = [(1.0, 5), (2.0, 5), (3.0, 6), (4.0, 6), (5.0, 0)]
    assert changes_after(0.0, samples) == [3.0, 5.0]
    # Killed at 2.5: 5 -> 6 between the samples at 2.0 and 3.0 may be the dead bridge's last write.
    assert changes_after(2.5, samples) == [5.0]
    assert changes_after(5.0, samples) == []
    assert seconds_to_next(2.5, [1.0, 3.0, 4.0]) == 0.5
    assert seconds_to_next(4.5, [1.0, 3.0, 4.0]) is None


def test_each_fault_kind_is_measured_on_its_own_output() -> None:
    assert fault_timeline("explainer SIGKILL") == "reports"
    assert fault_timeline("plc bridge SIGKILL") == "plc_heartbeat"
    assert fault_timeline("scorer SIGKILL during rebalance") == "verdicts"
    assert fault_timeline("broker SIGKILL") == "verdicts"
    assert fault_timeline("frames partition 0 leader SIGKILL") == "verdicts"
