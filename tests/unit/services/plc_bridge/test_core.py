"""PLC bridge core: verdicts, duplicates, part tracking and fail-safe, without Kafka or a PLC."""

from __future__ import annotations

import pytest

from services.plc_bridge import registers as reg
from services.plc_bridge.core import BridgeCore, FailSafeCause, StationState, VerdictOutcome
from shared.messages.schemas import Verdict
from tests.support import messages as build


def verdict(
    frame_id: str, station_id: str = "s1", decision: str = "pass", captured_at: int = 0, late: bool = False
) -> Verdict:
    """A verdict from the scorer on a frame captured at ``captured_at`` (ns)."""
    return build.verdict(frame_id, decision, station_id=station_id, captured_at=captured_at, late=late)


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


# ---- issue 9: de-duplication per station, late and undecodable verdicts, Kafka and scorer faults ----


SECOND_NS = 1_000_000_000


def test_the_same_frame_id_at_two_stations_is_two_verdicts():
    c = core()
    assert c.apply_verdict(verdict("f1", station_id="s1"), 0) is VerdictOutcome.APPLIED
    assert c.apply_verdict(verdict("f1", station_id="s2"), 0) is VerdictOutcome.APPLIED
    assert c.state["s2"].pass_count == 1
    assert c.apply_verdict(verdict("f1", station_id="s2"), 0) is VerdictOutcome.DUPLICATE


def test_dedup_memory_is_bounded_in_entries_and_bytes_and_counts_evictions():
    c = core(dedup_window=3)
    for i in range(10):
        c.apply_verdict(verdict("x" * 200 + str(i)), 0)
    assert len(c._seen) == 3
    assert c._seen.capacity == 3  # fixed at start; it holds 16-byte digests, not the wire's ids
    assert c.take_capped() == {"dedup": 7}
    assert c.take_capped() == {}


def test_a_verdict_older_than_its_deadline_on_arrival_fails_its_station_safe():
    c = core(verdict_deadline_s=0.5)
    fresh = verdict("ok", decision="pass", captured_at=10 * SECOND_NS)
    assert c.apply_verdict(fresh, 1.0, wall_ns=10 * SECOND_NS + SECOND_NS // 4) is VerdictOutcome.APPLIED
    stale = verdict("old", decision="pass", captured_at=10 * SECOND_NS)
    assert c.apply_verdict(stale, 2.0, wall_ns=11 * SECOND_NS) is VerdictOutcome.LATE
    st = c.state["s1"]
    assert st.reject and st.fail_safe_count == 1 and st.last_decision == reg.DECISION_CODES["fail_safe"]
    assert st.pass_count == 2 and st.last_frame_id == "old"  # counted and shown, never acted on as a pass
    assert c.take_fail_safes() == [("s1", FailSafeCause.VERDICT_LATE)]
    assert not c.state["s2"].reject


def test_a_verdict_the_scorer_marked_late_fails_safe_even_without_a_bridge_deadline():
    c = core(verdict_deadline_s=0.0)
    assert c.apply_verdict(verdict("l", decision="pass", late=True), 0.0, wall_ns=0) is VerdictOutcome.LATE
    assert c.state["s1"].reject and c.take_fail_safes() == [("s1", FailSafeCause.VERDICT_LATE)]


def test_an_undecodable_verdict_fails_its_station_safe_or_every_station_when_the_key_is_unknown():
    c = core()
    c.undecodable("s2", 0.0)
    assert c.state["s2"].reject and not c.state["s1"].reject
    assert c.take_fail_safes() == [("s2", FailSafeCause.VERDICT_UNDECODABLE)]
    c.undecodable(None, 0.0)
    assert c.state["s1"].reject and c.state["s2"].fail_safe_count == 2
    assert sorted(c.take_fail_safes()) == [
        ("s1", FailSafeCause.VERDICT_UNDECODABLE),
        ("s2", FailSafeCause.VERDICT_UNDECODABLE),
    ]


def test_kafka_unreachable_fails_every_station_safe_once_and_recovers():
    c = core(scorer_timeout_s=5.0, stop_line_on_fail_safe=True)
    c.kafka_ok(1.0)
    c.scorer_alive(1.0)
    assert c.tick(5.0) == []
    assert sorted(c.tick(6.5)) == ["s1", "s2"]
    assert c.line.fail_safe_active and c.line.stop_line and not c.line.scorer_ok
    assert {cause for _, cause in c.take_fail_safes()} == {FailSafeCause.KAFKA_UNREACHABLE}
    assert c.tick(30.0) == []  # asserted once per outage
    c.kafka_ok(31.0)
    c.scorer_alive(31.0)
    c.tick(31.0)
    assert c.line.scorer_ok and not c.line.stop_line and not c.line.fail_safe_active
    assert c.state["s1"].reject  # held until the station's next verdict


def test_frames_waiting_without_scorer_progress_fail_every_station_safe_until_it_moves():
    c = core(scorer_timeout_s=3.0)

    def observe(now: float, offsets: dict[int, tuple[int, int]]) -> list[tuple[str, FailSafeCause]]:
        c.scorer_alive(now)  # the group has members: only the frames tell that it is stuck
        c.frames_progress(offsets, now)
        c.tick(now)
        return sorted(c.take_fail_safes())

    assert observe(0.0, {0: (10, 10), 1: (5, 5)}) == []  # idle
    assert observe(1.0, {0: (10, 12), 1: (5, 5)}) == []  # frames arrive: waiting since 1.0
    assert observe(3.5, {0: (10, 12), 1: (5, 5)}) == []
    assert observe(4.5, {0: (10, 13), 1: (5, 5)}) == [
        ("s1", FailSafeCause.FRAMES_STALLED),
        ("s2", FailSafeCause.FRAMES_STALLED),
    ]
    assert c.stalled_partitions(4.5) == [0]
    assert c.line.fail_safe_active and not c.line.scorer_ok
    # While stalled a verdict is counted but cannot release a reject: its station's frames may be stuck.
    assert c.apply_verdict(verdict("during", decision="pass"), 4.6) is VerdictOutcome.AFTER_FAIL_SAFE
    assert c.state["s1"].reject and c.state["s1"].pass_count == 1
    assert observe(5.0, {0: (13, 13), 1: (5, 5)}) == []  # it moved: the stall is over
    assert c.line.scorer_ok and not c.line.fail_safe_active
    c.apply_verdict(verdict("after", decision="pass"), 5.1)
    assert not c.state["s1"].reject


def test_frames_stall_ignores_a_trailing_transaction_marker_and_an_idle_line():
    c = core(scorer_timeout_s=1.0)
    for t in range(10):
        c.scorer_alive(float(t))
        # committed 10, end 11: a transactional producer's commit marker, not a frame; nothing arrives
        c.frames_progress({0: (10, 11)}, float(t))
        c.tick(float(t))
        assert c.take_fail_safes() == []
    c.frames_progress({0: (10, 12)}, 10.0)  # a real frame arrives and stays unscored
    c.scorer_alive(11.5)
    c.frames_progress({0: (10, 12)}, 11.5)
    assert sorted(s for s, _ in c.take_fail_safes()) == ["s1", "s2"]


def test_a_frames_partition_that_disappears_is_forgotten():
    c = core(scorer_timeout_s=1.0)
    c.frames_progress({0: (0, 0), 1: (0, 0)}, 0.0)
    c.frames_progress({0: (0, 5)}, 0.5)
    assert set(c._frames.partitions) == {0}


def test_credits_for_verdicts_without_triggers_are_capped_and_counted():
    c = core(part_deadline_s=100.0, max_tracked_parts=3)
    c.part_trigger("s1", 0, 0.0)
    for i in range(5):
        c.apply_verdict(verdict(f"v{i}"), 0.1)
    assert len(c._tracking["s1"].credits) == 3
    assert c.take_capped() == {"credits": 2}


def test_station_ids_must_be_safe_as_labels_and_node_ids():
    with pytest.raises(ValueError):
        BridgeCore(["ok", "not/ok"])
    with pytest.raises(ValueError):
        BridgeCore(["x" * 65])
    with pytest.raises(ValueError):
        BridgeCore([f"s{i}" for i in range(reg.MAX_STATIONS + 1)])


def test_liveness_is_measured_from_when_the_bridge_starts_watching():
    c = core(scorer_timeout_s=5.0)  # made at 0; the PLC took 60 s to answer
    c.watching_from(60.0)
    c.tick(64.0)
    assert c.take_fail_safes() == [] and c.line.scorer_ok
    c.tick(65.5)
    assert {cause for _, cause in c.take_fail_safes()} == {FailSafeCause.KAFKA_UNREACHABLE}


# ---- replays after a crash: what the applied-verdicts ledger says against what the PLC shows ----


def restarted(shows: str, applied: list[str], **kw) -> BridgeCore:
    """A core after a restart: the PLC shows ``shows`` at s1 (with one pass and two rejects), the
    ledger says ``applied`` were applied there."""
    c = core(**kw)
    c.seed("s1", StationState(reject=True, pass_count=1, reject_count=2, last_frame_id=shows, sequence=3))
    c.recover("s2", [])
    assert c.take_dirty()  # the seed's write
    return c


def test_replays_the_plc_showed_are_acknowledged_and_change_nothing():
    c = restarted("c", ["a", "b", "c"])
    assert c.recover("s1", ["a", "b", "c"]) == (3, 0)
    before = StationState(**vars(c.state["s1"]))
    for fid in ("a", "b", "c"):
        assert c.apply_verdict(verdict(fid, decision="pass"), 1.0) is VerdictOutcome.REPLAYED
    assert c.state["s1"] == before and c.take_dirty() == ({}, None)
    assert c.take_replays() == {"skipped": 3}
    # a further copy is a plain duplicate; the next new verdict is applied as ever
    assert c.apply_verdict(verdict("c"), 1.0) is VerdictOutcome.DUPLICATE
    assert c.apply_verdict(verdict("d", decision="pass"), 1.0) is VerdictOutcome.APPLIED
    assert c.state["s1"].pass_count == 2 and c.take_replays() == {}


def test_a_replay_does_not_count_as_proof_of_a_working_scorer():
    c = restarted("a", ["a"], scorer_timeout_s=5.0)
    c.recover("s1", ["a"])
    c.apply_verdict(verdict("a"), 6.0)  # a replay at 6 s: Kafka answers, no scorer seen since 0 s
    assert c.line_cause is FailSafeCause.SCORER_SILENT


def test_replays_applied_but_never_shown_are_applied_without_taking_a_new_part():
    # The bridge died after noting b and c in the ledger, before the PLC write that would show them.
    c = restarted("a", ["a", "b", "c"], part_deadline_s=1.0)
    assert c.recover("s1", ["a", "b", "c"]) == (1, 2)
    c.part_trigger("s1", 10, 1.0)  # the baseline
    c.part_trigger("s1", 11, 1.1)  # a new part, which no verdict has judged yet
    assert c.apply_verdict(verdict("a", decision="pass"), 1.2) is VerdictOutcome.REPLAYED
    assert c.apply_verdict(verdict("b", decision="pass"), 1.2) is VerdictOutcome.APPLIED
    assert c.apply_verdict(verdict("c", decision="reject"), 1.2) is VerdictOutcome.APPLIED
    st = c.state["s1"]
    assert (st.pass_count, st.reject_count, st.last_frame_id, st.reject) == (2, 3, "c", True)
    assert c.pending_parts("s1") == 1  # still waiting for its own verdict
    assert c.take_replays() == {"skipped": 1, "reapplied": 2}
    c.tick(2.5)  # ... which never comes: failed safe, not "judged" by b or c
    assert c.take_fail_safes() == [("s1", FailSafeCause.PART_DEADLINE)]
    assert c.apply_verdict(verdict("c"), 3.0) is VerdictOutcome.DUPLICATE


def test_a_plc_showing_no_ledger_entry_shows_none_of_them():
    for shows in ("", "x"):  # a blank (replaced) PLC, or one showing a frame the ledger lost
        c = restarted(shows, ["a", "b"])
        assert c.recover("s1", ["a", "b"]) == (0, 2)
        assert c.apply_verdict(verdict("a"), 1.0) is VerdictOutcome.APPLIED
        assert c.take_replays() == {"reapplied": 1}


def test_the_last_ledger_entry_the_plc_shows_decides_even_with_a_truncated_frame_id():
    long_id = "f" * 30 + "é" * 10  # 50 bytes of UTF-8: the PLC holds the first 40
    shown = reg.decode_frame_id(reg.encode_frame_id(long_id))
    assert shown != long_id
    c = restarted(shown, [])
    assert c.recover("s1", ["a", long_id, "b"]) == (2, 1)
    assert c.apply_verdict(verdict(long_id), 1.0) is VerdictOutcome.REPLAYED
    assert c.apply_verdict(verdict("b"), 1.0) is VerdictOutcome.APPLIED


def test_replays_are_per_station():
    c = restarted("a", [])
    c.recover("s1", ["a"])
    assert c.apply_verdict(verdict("a", station_id="s2"), 1.0) is VerdictOutcome.APPLIED
    assert c.apply_verdict(verdict("a", station_id="s1"), 1.0) is VerdictOutcome.REPLAYED
