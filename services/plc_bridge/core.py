"""The PLC bridge's decisions, without Kafka or a PLC: verdicts, part tracking, fail-safe.

The core keeps the absolute state every PLC output should show (counters, last frame id, reject
output, heartbeat). The shell writes that state, whole, to the PLC: writes are idempotent, so a
failed write is simply repeated and a restarted bridge continues from the counters it reads back.

Fail-safe (the station's reject output, fail-safe count +1, last decision 5) is asserted for:

- the whole line, once per episode, while any of these lasts ``scorer_timeout_s``: Kafka cannot be
  reached (``kafka_ok`` not called), the scorer's consumer group has no members and no verdict
  came (``scorer_alive`` not called), or frames wait on a ``frames`` partition while the scorer
  group's committed offset there does not move (``frames_progress``). The committed offset is
  where the scorer's verdicts are committed (same transaction), so "frames wait and it does not
  move" is "frames wait and no verdict comes". Which station's camera writes to which partition
  is the producer's business, so a stall fails every station safe. While a condition lasts the
  rejects stay asserted; afterwards each is released by that station's next verdict;
- one station: a verdict that arrives after its deadline (the scorer marked it late, or it is
  older than ``verdict_deadline_s`` by its capture time), a verdict that cannot be decoded (its
  record key names the station; an unknown key fails every station safe), and a tracked part
  without a verdict in time (below).

Part tracking (``part_deadline_s`` > 0): the PLC counts parts entering the inspection window in a
trigger register. Each new count is a part that must get a verdict from its station before the
deadline; verdicts are matched to parts first-in first-out (a station's verdicts arrive in order,
key = station id). A part whose deadline passes gets the fail-safe result at once; its verdict,
when it finally comes, is counted but does not release the reject already asserted.

Replays after a crash: offsets are committed after the PLC shows a verdict, so a restarted bridge
is given again what the PLC showed since the last commit. ``recover`` takes, per station, the frame
ids the applied-verdicts ledger (``ledger``) says were applied, oldest first, and compares them with
the frame id the PLC shows (every write is the whole state, so the PLC showing frame X shows every
verdict applied up to X and none after it):

- up to and including X: shown. Their replays are acknowledged and change nothing (``REPLAYED``):
  no counter, no output, no part matched;
- after X: applied but never shown (the bridge died between its ledger write and the PLC write).
  Their replays are applied, but matched to no tracked part: their parts went by before this start
  (the trigger counter read at start is a baseline), and a new part must not take their result;
- X not among them (a blank or replaced PLC, or a ledger that lost it): none counts as shown, all
  are applied as in the case before (counted on this PLC, matched to no part).

Memory is bounded whatever arrives: only configured stations have state, de-duplication keeps at
most ``dedup_window`` 16-byte digests of (station, frame id) in a window allocated in full at start
(``dedup.DigestWindow``: flat memory, not a dict that grows until full), and the part queues hold
at most ``max_tracked_parts`` each. When a bound drops something it is counted (``take_capped``).
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

from services.plc_bridge.dedup import DigestWindow, digest
from services.plc_bridge.registers import (
    DECISION_CODES,
    FAIL_SAFE,
    MAX_STATIONS,
    decode_frame_id,
    encode_frame_id,
)
from shared.engine.config import DECISIONS, Decision
from shared.errors import ConfigError
from shared.messages.schemas import Verdict
from shared.settings import FailSafeAction, Settings, config_error

DEFAULT_REJECT_DECISIONS = frozenset({Decision.REJECT, Decision.REVIEW, Decision.ERROR})
# Station ids become Prometheus labels, OPC UA node ids (lineguard/<station>/...) and log fields.
STATION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_NS_PER_S = 1_000_000_000


class VerdictOutcome(StrEnum):
    """What applying one verdict did (the ``outcome`` label of the verdicts metric)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # same (station, frame_id) seen before: applied once only
    UNKNOWN_STATION = "unknown_station"  # not in the configured station list
    AFTER_FAIL_SAFE = "after_fail_safe"  # its part had already been failed safe, or the line is
    LATE = "late"  # past its deadline on arrival: the station was failed safe instead
    REPLAYED = "replayed"  # the PLC showed it before a restart (ledger): acknowledged, not applied


class FailSafeCause(StrEnum):
    """Why a fail-safe reject was asserted (the ``cause`` label of the fail-safes metric)."""

    PART_DEADLINE = "part_deadline"
    SCORER_SILENT = "scorer_silent"
    FRAMES_STALLED = "frames_stalled"
    KAFKA_UNREACHABLE = "kafka_unreachable"
    VERDICT_LATE = "verdict_late"
    VERDICT_UNDECODABLE = "verdict_undecodable"


@dataclass
class StationState:
    reject: bool = False
    sequence: int = 0  # uint16 on the wire
    last_decision: int = 0
    pass_count: int = 0
    reject_count: int = 0
    fail_safe_count: int = 0
    last_frame_id: str = ""


@dataclass
class LineState:
    heartbeat: int = 0
    scorer_ok: bool = True
    fail_safe_active: bool = False
    stop_line: bool = False


@dataclass
class _Tracking:
    parts: deque[float] = field(default_factory=deque)  # deadlines of parts awaiting a verdict
    # Failed-safe parts whose verdict is still to come, as the time we stop waiting for it (a
    # trigger without a frame must not shift every later match).
    expired: deque[float] = field(default_factory=deque)
    credits: deque[float] = field(default_factory=deque)  # verdicts that beat their trigger read
    last_trigger: int | None = None


@dataclass
class _Progress:
    committed: int  # the scorer group's committed offset
    end_then: int  # the end offset when ``committed`` last moved
    waiting_since: float | None = None  # frames have waited, with no progress, since then


class FramesWatch:
    """Per ``frames`` partition: are frames waiting while the scorer's committed offset stands still?

    Frames wait when the end offset is two or more past the committed offset, or has grown since
    the committed offset last moved (a transactional producer's commit marker leaves the end one
    past the last frame, which is not a frame waiting).
    """

    def __init__(self) -> None:
        self.partitions: dict[int, _Progress] = {}

    def observe(self, offsets: dict[int, tuple[int, int]], now: float) -> None:
        """``offsets``: partition -> (committed offset, end offset), for every partition. Where the
        group never committed, the committed offset is the partition's first (scorers start there)."""
        for partition, (committed, end) in offsets.items():
            seen = self.partitions.get(partition)
            if seen is None or committed != seen.committed or end < seen.end_then:
                self.partitions[partition] = _Progress(committed, end)
                continue
            waiting = end - committed >= 2 or (end > committed and end > seen.end_then)
            if not waiting:
                seen.waiting_since = None
            elif seen.waiting_since is None:
                seen.waiting_since = now
        for gone in set(self.partitions) - set(offsets):
            del self.partitions[gone]

    def stalled(self, now: float, timeout_s: float) -> list[int]:
        return sorted(
            p
            for p, st in self.partitions.items()
            if st.waiting_since is not None and now - st.waiting_since > timeout_s
        )


def _as_plc_shows(frame_id: str) -> str:
    """The frame id as the PLC's register holds it (UTF-8, cut at its 40 bytes)."""
    return decode_frame_id(encode_frame_id(frame_id))


def check_station_ids(stations: list[str]) -> None:
    if not stations or len(set(stations)) != len(stations):
        raise ConfigError("stations must be a non-empty list of distinct station ids")
    if len(stations) > MAX_STATIONS:
        raise ConfigError(f"at most {MAX_STATIONS} stations (the register map's station blocks)")
    bad = [s for s in stations if not STATION_ID.fullmatch(s)]
    if bad:
        raise ConfigError(f"station ids must be 1-64 of A-Z a-z 0-9 . _ - (not starting with '.'): {bad}")


class BridgeCore:
    def __init__(
        self,
        stations: list[str],
        *,
        reject_decisions: frozenset[str] = DEFAULT_REJECT_DECISIONS,
        stop_line_on_fail_safe: bool = False,
        scorer_timeout_s: float = 10.0,
        part_deadline_s: float = 0.0,
        verdict_deadline_s: float = 0.0,
        max_tracked_parts: int = 1000,
        dedup_window: int = 100_000,
        now: float = 0.0,
    ) -> None:
        check_station_ids(stations)
        self.stations = list(stations)
        self.index = {s: i for i, s in enumerate(stations)}
        self.reject_decisions = reject_decisions
        self.stop_line_on_fail_safe = stop_line_on_fail_safe
        self.scorer_timeout_s = scorer_timeout_s
        self.part_deadline_s = part_deadline_s
        self.verdict_deadline_ns = int(verdict_deadline_s * _NS_PER_S)
        # How long a failed-safe part waits for its late verdict before it is forgotten.
        self.late_grace_s = max(scorer_timeout_s, 10 * part_deadline_s)
        self.max_tracked_parts = max_tracked_parts
        self.dedup_window = dedup_window
        self.state = {s: StationState() for s in stations}
        self.line = LineState()
        self.dirty: set[str] = set(stations)  # stations whose outputs must be (re)written
        self.line_dirty = True
        self._seen = DigestWindow(dedup_window)
        # From the ledger at start (``recover``): True if the PLC showed it, False if not. Bounded by
        # the ledger; each entry goes when its replay comes.
        self._replays: dict[bytes, bool] = {}
        self._replayed: Counter[str] = Counter()
        self._tracking = {s: _Tracking() for s in stations}
        self._frames = FramesWatch()
        self._scorer_seen_at = now
        self._kafka_seen_at = now
        self._line_cause: FailSafeCause | None = None  # the line-wide condition in force, if any
        self._fail_safes: list[tuple[str, FailSafeCause]] = []
        self._capped: Counter[str] = Counter()
        self.dropped_parts = 0  # tracked parts dropped because the queue was full

    # ---- start-up -------------------------------------------------------------------------

    def seed(self, station: str, state: StationState) -> None:
        """Continue from what the PLC shows (counters, last frame id) after a restart."""
        self.state[station] = state
        if state.last_frame_id:
            self._remember(station, state.last_frame_id)
        self.dirty.add(station)

    def recover(self, station: str, applied: list[str]) -> tuple[int, int]:
        """After ``seed``: the station's frame ids the ledger says were applied, oldest first.
        Returns how many the PLC shows and how many it does not (see the module's docstring)."""
        shown_id = self.state[station].last_frame_id
        shown = 0
        if shown_id:
            for i in range(len(applied) - 1, -1, -1):  # the last one applied is the one shown
                if _as_plc_shows(applied[i]) == shown_id:
                    shown = i + 1
                    break
        for i, frame_id in enumerate(applied):
            self._replays[digest(station, frame_id)] = i < shown
        return shown, len(applied) - shown

    def watching_from(self, now: float) -> None:
        """Liveness is measured from ``now``: the bridge has just started watching (connecting the
        PLC may have taken long; that is no sign of a silent scorer)."""
        self._scorer_seen_at = self._kafka_seen_at = now

    # ---- verdicts -------------------------------------------------------------------------

    def apply_verdict(
        self, verdict: Verdict, now: float, *, wall_ns: int | None = None
    ) -> VerdictOutcome:
        """Apply one decoded verdict at monotonic ``now``; ``wall_ns`` (epoch ns) for its age."""
        station = verdict.station_id
        if station not in self.state:
            return VerdictOutcome.UNKNOWN_STATION
        replay = self._replays.pop(digest(station, verdict.frame_id), None) if self._replays else None
        if replay:  # the PLC showed it before the restart: only its offset is left to commit
            self._remember(station, verdict.frame_id)  # a further copy is a duplicate
            self._replayed["skipped"] += 1
            self.kafka_ok(now)  # an old verdict proves Kafka answers, not that a scorer works now
            return VerdictOutcome.REPLAYED
        self.scorer_alive(now)  # a verdict is the best proof of life
        if not self._remember(station, verdict.frame_id):
            return VerdictOutcome.DUPLICATE
        if replay is not None:
            self._replayed["reapplied"] += 1
        st = self.state[station]
        rejected = verdict.decision in self.reject_decisions
        if rejected:
            st.reject_count += 1
        elif verdict.decision == Decision.PASS:
            st.pass_count += 1
        st.last_frame_id = verdict.frame_id
        self.dirty.add(station)
        # A replay's part went by before this start: it must not take a new part's place.
        if replay is None and self._consume_part(station, now):  # its part was failed safe: keep it
            self._update_fail_safe_flags()
            return VerdictOutcome.AFTER_FAIL_SAFE
        if self._is_late(verdict, wall_ns):
            self._fail_safe(station, FailSafeCause.VERDICT_LATE)
            self._update_fail_safe_flags()
            return VerdictOutcome.LATE
        if self._line_cause is not None:  # e.g. frames stalled: this station's may be among them
            return VerdictOutcome.AFTER_FAIL_SAFE
        st.reject = rejected
        st.last_decision = DECISION_CODES.get(verdict.decision, DECISION_CODES[Decision.ERROR])
        st.sequence = (st.sequence + 1) & 0xFFFF
        return VerdictOutcome.APPLIED

    def _is_late(self, verdict: Verdict, wall_ns: int | None) -> bool:
        if verdict.late:  # the scorer decided after the frame's own deadline
            return True
        if self.verdict_deadline_ns <= 0 or wall_ns is None:
            return False
        return wall_ns - verdict.captured_at > self.verdict_deadline_ns

    def undecodable(self, station: str | None, now: float) -> list[str]:
        """A verdicts record that cannot be decoded: a part somewhere got no usable verdict.

        ``station``: the record's key, if it names a configured station; else every station.
        """
        self.kafka_ok(now)
        stations = [station] if station in self.state else list(self.stations)
        for s in stations:
            self._fail_safe(s, FailSafeCause.VERDICT_UNDECODABLE)
        self._update_fail_safe_flags()
        return stations

    def _remember(self, station: str, frame_id: str) -> bool:
        """Remember (station, frame_id); False if it was already remembered."""
        added, evicted = self._seen.add(digest(station, frame_id))
        if evicted:
            self._capped["dedup"] += 1
        return added

    def _consume_part(self, station: str, now: float) -> bool:
        """Match a verdict to the oldest tracked part; True if that part was already failed safe."""
        if self.part_deadline_s <= 0:
            return False
        tr = self._tracking[station]
        while tr.expired and tr.expired[0] < now:
            tr.expired.popleft()
        if tr.expired:
            tr.expired.popleft()
            return True
        if tr.parts:
            tr.parts.popleft()
            return False
        # The verdict came before the PLC's trigger was read: credit the trigger still to come.
        tr.credits.append(now + self.part_deadline_s)
        if len(tr.credits) > self.max_tracked_parts:
            tr.credits.popleft()
            self._capped["credits"] += 1
        return False

    # ---- PLC part triggers ----------------------------------------------------------------

    def part_trigger(self, station: str, counter: int, now: float) -> int:
        """The PLC's trigger counter for a station (uint16, wraps); returns how many parts are new."""
        tr = self._tracking[station]
        if tr.last_trigger is None:  # first read: a baseline, not a burst of parts
            tr.last_trigger = counter
            return 0
        new = (counter - tr.last_trigger) & 0xFFFF
        tr.last_trigger = counter
        for _ in range(new):
            while tr.credits and tr.credits[0] < now:
                tr.credits.popleft()  # a credit nobody claimed in time
            if tr.credits:
                tr.credits.popleft()  # its verdict is already applied
                continue
            tr.parts.append(now + self.part_deadline_s)
            if len(tr.parts) > self.max_tracked_parts:
                tr.parts.popleft()
                self.dropped_parts += 1
                self._capped["tracked_parts"] += 1
        return new

    # ---- liveness -------------------------------------------------------------------------

    def scorer_alive(self, now: float) -> None:
        """The scorer's group has members, or a verdict arrived (either way, through Kafka)."""
        self._scorer_seen_at = self._kafka_seen_at = now
        self._evaluate_line(now)

    def kafka_ok(self, now: float) -> None:
        """Kafka answered (the bridge's watch got the scorer's group and offsets, or a record came)."""
        self._kafka_seen_at = now
        self._evaluate_line(now)

    def frames_progress(self, offsets: dict[int, tuple[int, int]], now: float) -> None:
        """Every ``frames`` partition's (scorer group's committed offset, end offset)."""
        self._frames.observe(offsets, now)
        self._evaluate_line(now)

    def stalled_partitions(self, now: float) -> list[int]:
        return self._frames.stalled(now, self.scorer_timeout_s)

    def _line_condition(self, now: float) -> FailSafeCause | None:
        if now - self._kafka_seen_at > self.scorer_timeout_s:
            return FailSafeCause.KAFKA_UNREACHABLE
        if now - self._scorer_seen_at > self.scorer_timeout_s:
            return FailSafeCause.SCORER_SILENT
        if self._frames.stalled(now, self.scorer_timeout_s):
            return FailSafeCause.FRAMES_STALLED
        return None

    def _evaluate_line(self, now: float) -> list[str]:
        """Enter or leave the line-wide fail-safe; returns the stations failed safe just now."""
        cause = self._line_condition(now)
        failed: list[str] = []
        if cause is not None and self._line_cause is None:  # once per episode, not once per tick
            for station in self.stations:
                self._fail_safe(station, cause)
                failed.append(station)
        self._line_cause = cause
        scorer_ok = cause is None
        if scorer_ok != self.line.scorer_ok:
            self.line.scorer_ok = scorer_ok
            self.line_dirty = True
        self._update_fail_safe_flags()
        return failed

    # ---- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[str]:
        """Expire overdue parts and check the line; returns the stations failed safe just now."""
        failed: list[str] = []
        for station, tr in self._tracking.items():
            while tr.parts and tr.parts[0] < now:
                tr.parts.popleft()
                tr.expired.append(now + self.late_grace_s)
                self._fail_safe(station, FailSafeCause.PART_DEADLINE)
                failed.append(station)
            while tr.expired and tr.expired[0] < now:
                tr.expired.popleft()  # its verdict never came: stop waiting
        failed += self._evaluate_line(now)
        return failed

    def _fail_safe(self, station: str, cause: FailSafeCause) -> None:
        st = self.state[station]
        st.reject = True
        st.fail_safe_count += 1
        st.last_decision = DECISION_CODES[FAIL_SAFE]
        st.sequence = (st.sequence + 1) & 0xFFFF
        self.dirty.add(station)
        self._fail_safes.append((station, cause))

    def _update_fail_safe_flags(self) -> None:
        overdue = any(tr.expired for tr in self._tracking.values())
        active = self._line_cause is not None or overdue
        stop = active and self.stop_line_on_fail_safe
        if (active, stop) != (self.line.fail_safe_active, self.line.stop_line):
            self.line.fail_safe_active, self.line.stop_line = active, stop
            self.line_dirty = True

    def beat(self) -> None:
        self.line.heartbeat = (self.line.heartbeat + 1) & 0xFFFF
        self.line_dirty = True

    # ---- for the shell --------------------------------------------------------------------

    @property
    def line_cause(self) -> FailSafeCause | None:
        return self._line_cause

    def pending_parts(self, station: str) -> int:
        return len(self._tracking[station].parts)

    def take_fail_safes(self) -> list[tuple[str, FailSafeCause]]:
        """Fail-safes asserted since the last call, as (station, cause)."""
        events, self._fail_safes = self._fail_safes, []
        return events

    def take_capped(self) -> dict[str, int]:
        """What each bound dropped since the last call (dedup, credits, tracked_parts)."""
        capped, self._capped = dict(self._capped), Counter()
        return capped

    def take_replays(self) -> dict[str, int]:
        """Replays since the last call: skipped (the PLC showed them) and reapplied (it did not)."""
        replayed, self._replayed = dict(self._replayed), Counter()
        return replayed

    def take_dirty(self) -> tuple[dict[str, StationState], LineState | None]:
        """What changed since the last write (copies), clearing the marks."""
        stations = {s: StationState(**vars(self.state[s])) for s in sorted(self.dirty)}
        line = LineState(**vars(self.line)) if self.line_dirty else None
        self.dirty.clear()
        self.line_dirty = False
        return stations, line

    def mark_all_dirty(self) -> None:
        """After a failed write or a reconnect: write everything again."""
        self.dirty = set(self.stations)
        self.line_dirty = True


def check_settings(settings: Settings) -> None:
    """What the settings object alone cannot check: a PLC to drive, sane stations, known decisions."""
    cfg = settings.plc_bridge
    if not cfg.modbus_host and not cfg.opcua_url:
        raise config_error(
            "LINEGUARD_PLC_BRIDGE__MODBUS_HOST or LINEGUARD_PLC_BRIDGE__OPCUA_URL must name the PLC"
        )
    try:
        check_station_ids(cfg.stations)
    except ConfigError as exc:
        raise config_error(f"LINEGUARD_PLC_BRIDGE__STATIONS: {exc}") from None
    unknown = set(cfg.reject_decisions) - set(DECISIONS)
    if unknown:
        raise config_error(f"LINEGUARD_PLC_BRIDGE__REJECT_DECISIONS: unknown {sorted(unknown)}")


def core_from_settings(settings: Settings, now: float) -> BridgeCore:
    cfg = settings.plc_bridge
    return BridgeCore(
        cfg.stations,
        reject_decisions=frozenset(Decision(d) for d in cfg.reject_decisions),
        stop_line_on_fail_safe=cfg.fail_safe is FailSafeAction.STOP_LINE,
        scorer_timeout_s=cfg.scorer_timeout_s,
        part_deadline_s=cfg.part_deadline_ms / 1000,
        verdict_deadline_s=cfg.verdict_deadline_ms / 1000,
        max_tracked_parts=cfg.max_tracked_parts,
        dedup_window=cfg.dedup_window,
        now=now,
    )
