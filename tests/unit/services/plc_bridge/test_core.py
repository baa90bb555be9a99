"""PLC bridge core: verdicts, duplicates, part tracking and fail-safe, without Kafka or a PLC."""

from __future__ import annotations

import pytest

from services.plc_bridge import registers as reg
from services.plc_bridge.core import BridgeCore, StationState, VerdictOutcome
from shared.messages.schemas import Verdict
from tests.support import messages as build


def verdict(frame_id: str, station_id: str = "s1", decision: str = "pass") -> Verdict:
    """A verdict from the scorer (the bridge reads its frame, station and decision)."""
    return build.verdict(frame_id, decision, station_id=station_id)


def core(**kw) -> BridgeCore:
    kw.setdefault("scorer_timeout_s", 10.0)
    return BridgeCore(["s1", "s2"], **kw)


def test_verdicts_drive_outputs_and_counters():
    c = core()
    assert c.apply_verdict(verdict("a", decision="pass"), 0) is VerdictOutcome.APPLIED
    assert c.state["s1"].reject is False and c.state["s1"].pass_count == 1
    c.apply_verdict(verdict("b", decision="reject"), 0)
    c.apply_verdict(verdict("c", decision="review"), 0)
    st = c.state["s1"]
    assert st.reject is True and st.reject_count == 2 and st.pass_count == 1
    assert st.last_decision == reg.DECISION_CODES["review"] and st.last_frame_id == "c"
    assert st.sequence == 3
    assert c.state["s2"] == StationState()


def test_reject_decisions_are_configurable():
    c = core(reject_decisions=frozenset({"reject"}))
    c.apply_verdict(verdict("a", decision="review"), 0)
    assert c.state["s1"].reject is False and c.state["s1"].reject_count == 0


def test_duplicate_frame_ids_apply_once_and_unknown_stations_are_refused():
    c = core()
    c.apply_verdict(verdict("a", decision="reject"), 0)
    assert c.apply_verdict(verdict("a", decision="reject"), 0) is VerdictOutcome.DUPLICATE
    assert c.state["s1"].reject_count == 1 and c.state["s1"].sequence == 1
    assert c.apply_verdict(verdict("z", station_id="elsewhere"), 0) is VerdictOutcome.UNKNOWN_STATION


def test_dedup_window_is_bounded():
    c = core(dedup_window=2)
    for fid in ("a", "b", "c"):
        c.apply_verdict(verdict(fid), 0)
    assert c.apply_verdict(verdict("a"), 0) is VerdictOutcome.APPLIED  # forgotten: outside the window
    assert c.apply_verdict(verdict("c"), 0) is VerdictOutcome.DUPLICATE


def test_seed_continues_counters_and_refuses_the_last_frame_again():
    c = core()
    c.seed("s1", StationState(pass_count=41, reject_count=7, sequence=9, last_frame_id="last"))
    assert c.apply_verdict(verdict("last"), 0) is VerdictOutcome.DUPLICATE
    c.apply_verdict(verdict("next"), 0)
    assert c.state["s1"].pass_count == 42 and c.state["s1"].sequence == 10


def test_scorer_silence_fails_safe_on_every_station_and_recovers():
    c = core(scorer_timeout_s=5.0, stop_line_on_fail_safe=True)
    c.apply_verdict(verdict("a"), 0)
    assert c.tick(4.0) == []
    assert sorted(c.tick(5.5)) == ["s1", "s2"]
    assert c.line.scorer_ok is False and c.line.fail_safe_active and c.line.stop_line
    for s in ("s1", "s2"):
        assert c.state[s].reject and c.state[s].fail_safe_count == 1
        assert c.state[s].last_decision == reg.DECISION_CODES["fail_safe"]
    assert c.tick(20.0) == []  # asserted once, not on every tick
    c.scorer_alive(21.0)
    assert c.line.scorer_ok and not c.line.fail_safe_active and not c.line.stop_line
    assert c.state["s2"].reject  # held until that station's next verdict
    c.apply_verdict(verdict("b", station_id="s2"), 21.0)
    assert not c.state["s2"].reject


def test_reject_mode_does_not_stop_the_line():
    c = core(scorer_timeout_s=1.0)
    c.tick(2.0)
    assert c.line.fail_safe_active and not c.line.stop_line


def test_tracked_part_missing_its_deadline_is_failed_safe_and_its_late_verdict_keeps_the_reject():
    c = core(part_deadline_s=0.5)
    assert c.part_trigger("s1", 100, 0.0) == 0  # first read is the baseline
    assert c.part_trigger("s1", 102, 0.1) == 2
    assert c.apply_verdict(verdict("p1", decision="pass"), 0.3) is VerdictOutcome.APPLIED
    assert c.pending_parts("s1") == 1
    assert c.tick(0.7) == ["s1"]  # p2's deadline passed
    st = c.state["s1"]
    assert st.reject and st.fail_safe_count == 1 and c.line.fail_safe_active
    assert c.apply_verdict(verdict("p2", decision="pass"), 0.8) is VerdictOutcome.AFTER_FAIL_SAFE
    assert st.reject and st.pass_count == 2  # counted, but the part was already diverted
    assert not c.line.fail_safe_active
    c.part_trigger("s1", 103, 1.0)
    assert c.apply_verdict(verdict("p3", decision="pass"), 1.1) is VerdictOutcome.APPLIED
    assert not st.reject


def test_verdict_before_its_trigger_read_is_credited():
    c = core(part_deadline_s=0.5)
    c.part_trigger("s1", 0, 0.0)
    c.apply_verdict(verdict("fast"), 0.01)  # the scorer beat the trigger poll
    c.part_trigger("s1", 1, 0.05)
    assert c.pending_parts("s1") == 0 and c.tick(1.0) == []


def test_trigger_counter_wraps_and_queue_is_bounded():
    c = core(part_deadline_s=5.0, max_tracked_parts=3)
    c.part_trigger("s1", 65534, 0.0)
    assert c.part_trigger("s1", 2, 0.1) == 4
    assert c.pending_parts("s1") == 3 and c.dropped_parts == 1


def test_failed_safe_part_whose_verdict_never_comes_is_forgotten():
    c = core(part_deadline_s=0.5, scorer_timeout_s=100)
    c.part_trigger("s1", 0, 0.0)
    c.part_trigger("s1", 1, 0.0)
    c.tick(1.0)
    c.scorer_alive(150.0)
    c.tick(150.0)  # grace = max(scorer timeout, 10 x deadline) = 100 s
    assert not c.line.fail_safe_active
    c.part_trigger("s1", 2, 150.0)
    assert c.apply_verdict(verdict("x"), 150.1) is VerdictOutcome.APPLIED


def test_heartbeat_wraps_and_dirty_tracking():
    c = core()
    c.take_dirty()
    c.line.heartbeat = 0xFFFF
    c.beat()
    stations, line = c.take_dirty()
    assert stations == {} and line is not None and line.heartbeat == 0
    c.apply_verdict(verdict("a", station_id="s2"), 0)
    stations, line = c.take_dirty()
    assert list(stations) == ["s2"] and line is None


def test_stations_must_be_distinct():
    with pytest.raises(ValueError):
        BridgeCore(["a", "a"])


@pytest.mark.parametrize("frame_id", ["", "f-1", "0123456789" * 4, "ü-frame"])
def test_frame_id_registers_round_trip(frame_id):
    words = reg.encode_frame_id(frame_id)
    assert len(words) == 1 + reg.FRAME_ID_REGISTERS and all(0 <= w <= 0xFFFF for w in words)
    assert reg.decode_frame_id(words) == frame_id


def test_long_frame_ids_are_truncated_and_u32_round_trips():
    assert reg.decode_frame_id(reg.encode_frame_id("x" * 60)) == "x" * 40
    assert reg.words_u32(reg.u32_words(0x12345678)) == 0x12345678
    with pytest.raises(ValueError):
        reg.station_base(reg.MAX_STATIONS)
