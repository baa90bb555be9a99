"""The PLC bridge's decisions, without Kafka or a PLC: verdicts, part tracking, fail-safe.

The core keeps the absolute state every PLC output should show (counters, last frame id, reject
output, heartbeat). The shell writes that state, whole, to the PLC: writes are idempotent, so a
failed write is simply repeated and a restarted bridge continues from the counters it reads back.

Part tracking (``part_deadline_s`` > 0): the PLC counts parts entering the inspection window in a
trigger register. Each new count is a part that must get a verdict from its station before the
deadline; verdicts are matched to parts first-in first-out (a station's verdicts arrive in order,
key = station id). A part whose deadline passes gets the fail-safe result at once; its verdict,
when it finally comes, is counted but does not release the reject already asserted.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import StrEnum

from services.plc_bridge.registers import DECISION_CODES, FAIL_SAFE
from shared.engine.config import DECISIONS, Decision
from shared.errors import ConfigError
from shared.messages.schemas import Verdict
from shared.settings import FailSafeAction, Settings, config_error

DEFAULT_REJECT_DECISIONS = frozenset({Decision.REJECT, Decision.REVIEW, Decision.ERROR})


class VerdictOutcome(StrEnum):
    """What applying one verdict did (the ``outcome`` label of the verdicts metric)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # same frame_id seen before: applied once only
    UNKNOWN_STATION = "unknown_station"  # not in the configured station list
    AFTER_FAIL_SAFE = "after_fail_safe"  # its part had already been failed safe


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


class BridgeCore:
    def __init__(
        self,
        stations: list[str],
        *,
        reject_decisions: frozenset[Decision] = DEFAULT_REJECT_DECISIONS,
        stop_line_on_fail_safe: bool = False,
        scorer_timeout_s: float = 10.0,
        part_deadline_s: float = 0.0,
        max_tracked_parts: int = 1000,
        dedup_window: int = 100_000,
        now: float = 0.0,
    ) -> None:
        if len(set(stations)) != len(stations) or not stations:
            raise ConfigError("stations must be a non-empty list of distinct station ids")
        self.stations = list(stations)
        self.index = {s: i for i, s in enumerate(stations)}
        self.reject_decisions = reject_decisions
        self.stop_line_on_fail_safe = stop_line_on_fail_safe
        self.scorer_timeout_s = scorer_timeout_s
        self.part_deadline_s = part_deadline_s
        # How long a failed-safe part waits for its late verdict before it is forgotten.
        self.late_grace_s = max(scorer_timeout_s, 10 * part_deadline_s)
        self.max_tracked_parts = max_tracked_parts
        self.dedup_window = dedup_window
        self.state = {s: StationState() for s in stations}
        self.line = LineState()
        self.dirty: set[str] = set(stations)  # stations whose outputs must be (re)written
        self.line_dirty = True
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tracking = {s: _Tracking() for s in stations}
        self._scorer_seen_at = now
        self.dropped_parts = 0  # tracked parts dropped because the queue was full

    # ---- start-up -------------------------------------------------------------------------

    def seed(self, station: str, state: StationState) -> None:
        """Continue from what the PLC shows (counters, last frame id) after a restart."""
        self.state[station] = state
        if state.last_frame_id:
            self._remember(state.last_frame_id)
        self.dirty.add(station)

    # ---- verdicts -------------------------------------------------------------------------

    def apply_verdict(self, verdict: Verdict, now: float) -> VerdictOutcome:
        station = verdict.station_id
        if station not in self.state:
            return VerdictOutcome.UNKNOWN_STATION
        self.scorer_alive(now)  # a verdict is the best proof of life
        if verdict.frame_id in self._seen:
            self._seen.move_to_end(verdict.frame_id)
            return VerdictOutcome.DUPLICATE
        self._remember(verdict.frame_id)
        st = self.state[station]
        rejected = verdict.decision in self.reject_decisions
        if rejected:
            st.reject_count += 1
        elif verdict.decision == Decision.PASS:
            st.pass_count += 1
        st.last_frame_id = verdict.frame_id
        self.dirty.add(station)
        if self._consume_part(station, now):  # the part was already failed safe: keep the reject
            self._update_fail_safe_flags()
            return VerdictOutcome.AFTER_FAIL_SAFE
        st.reject = rejected
        st.last_decision = DECISION_CODES.get(verdict.decision, DECISION_CODES[Decision.ERROR])
        st.sequence = (st.sequence + 1) & 0xFFFF
        return VerdictOutcome.APPLIED

    def _remember(self, frame_id: str) -> None:
        self._seen[frame_id] = None
        while len(self._seen) > self.dedup_window:
            self._seen.popitem(last=False)

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
        return new

    # ---- time -----------------------------------------------------------------------------

    def scorer_alive(self, now: float) -> None:
        self._scorer_seen_at = now
        if not self.line.scorer_ok:
            self.line.scorer_ok = True
            self.line_dirty = True
        self._update_fail_safe_flags()

    def tick(self, now: float) -> list[str]:
        """Expire overdue parts and check the scorer; returns the stations failed safe just now."""
        failed: list[str] = []
        for station, tr in self._tracking.items():
            while tr.parts and tr.parts[0] < now:
                tr.parts.popleft()
                tr.expired.append(now + self.late_grace_s)
                self._fail_safe(station)
                failed.append(station)
            while tr.expired and tr.expired[0] < now:
                tr.expired.popleft()  # its verdict never came: stop waiting
        if self.line.scorer_ok and now - self._scorer_seen_at > self.scorer_timeout_s:
            self.line.scorer_ok = False
            self.line_dirty = True
            for station in self.stations:
                self._fail_safe(station)
                failed.append(station)
        self._update_fail_safe_flags()
        return failed

    def _fail_safe(self, station: str) -> None:
        st = self.state[station]
        st.reject = True
        st.fail_safe_count += 1
        st.last_decision = DECISION_CODES[FAIL_SAFE]
        st.sequence = (st.sequence + 1) & 0xFFFF
        self.dirty.add(station)

    def _update_fail_safe_flags(self) -> None:
        overdue = any(tr.expired for tr in self._tracking.values())
        active = (not self.line.scorer_ok) or overdue
        stop = active and self.stop_line_on_fail_safe
        if (active, stop) != (self.line.fail_safe_active, self.line.stop_line):
            self.line.fail_safe_active, self.line.stop_line = active, stop
            self.line_dirty = True

    def beat(self) -> None:
        self.line.heartbeat = (self.line.heartbeat + 1) & 0xFFFF
        self.line_dirty = True

    def pending_parts(self, station: str) -> int:
        return len(self._tracking[station].parts)

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
    """What the settings object alone cannot check: a PLC to drive, distinct stations, known decisions."""
    cfg = settings.plc_bridge
    if not cfg.modbus_host and not cfg.opcua_url:
        raise config_error(
            "LINEGUARD_PLC_BRIDGE__MODBUS_HOST or LINEGUARD_PLC_BRIDGE__OPCUA_URL must name the PLC"
        )
    if len(set(cfg.stations)) != len(cfg.stations) or not cfg.stations:
        raise config_error("LINEGUARD_PLC_BRIDGE__STATIONS: need distinct station ids")
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
        max_tracked_parts=cfg.max_tracked_parts,
        dedup_window=cfg.dedup_window,
        now=now,
    )
