"""The scorer's operator-alert rules: pure detection over the stream of verdicts, no Kafka, no clock.

The scorer owns one ``AlertDetector`` and calls ``detector.observe(verdict)`` for every verdict it
publishes; each returned ``AlertEvent`` goes to the ``alerts`` topic (key: station id) in the same
transaction, and ``lineguard alerts`` forwards it to a webhook. Time comes from the verdicts
(``decided_at``), so the detector is deterministic and replays give the same alerts.

Three things an operator acts on at once:
- ``consecutive_rejects``: N rejects in a row at one station (a jam, a bad batch, a dirty lens).
  Raised once per streak; re-armed by any non-reject verdict at that station.
- ``unknown_product``: a part the model could not route to any trained class. At most one per
  station per cooldown, with the number of unknowns seen in between.
- ``score_drift``: the recent mean score of one class at one station has moved away from its own
  rolling baseline by more than ``threshold`` baseline standard deviations (lighting, camera or
  process change). Raised once, re-armed when the shift falls below half the threshold.

Stations, lines and classes come off the wire, so every map keyed by them is capped (``max_keys``,
least recently seen evicted first, ``on_evict`` told): a producer inventing stations cannot grow
the scorer's memory.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from shared.capped import CappedMap
from shared.engine.config import UNKNOWN, Decision
from shared.errors import ConfigError
from shared.messages.schemas import MAX_ALERT_FRAMES, AlertEvent, Verdict
from shared.settings import AlertsSettings, from_section

_NS_PER_S = 1_000_000_000
DEFAULT_MAX_KEYS = 4096
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class AlertRules:
    consecutive_rejects: int = 5
    unknown_product_cooldown_s: float = 60.0
    drift_recent: int = 50  # verdicts in the recent window
    drift_baseline: int = 500  # verdicts in the baseline window (those older than the recent ones)
    drift_threshold: float = 1.0  # shift of the recent mean, in baseline standard deviations

    def __post_init__(self) -> None:
        if self.consecutive_rejects < 1:
            raise ConfigError("consecutive_rejects must be >= 1")
        if self.drift_recent < 2 or self.drift_baseline < 2:
            raise ConfigError("drift windows must hold at least 2 verdicts")
        if self.drift_threshold <= 0 or self.unknown_product_cooldown_s < 0:
            raise ConfigError("drift_threshold must be > 0 and the cooldown >= 0")

    @classmethod
    def from_settings(cls, settings: AlertsSettings) -> AlertRules:
        """From ``Settings().alerts``, whose detection fields have these names."""
        return from_section(cls, settings)


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class DetectorOptions:
    """What every detector is given alike: how alert ids are made, and the cap (with its eviction
    callback) on each of its maps keyed by values off the wire."""

    make_id: Callable[[], str] = _new_id
    max_keys: int = DEFAULT_MAX_KEYS
    on_evict: Callable[[str], None] | None = None

    def capped_map(self, name: str) -> CappedMap[K, V]:
        return CappedMap(name, self.max_keys, self.on_evict)


def _alert(
    verdict: Verdict,
    kind: str,
    severity: str,
    summary: str,
    frame_ids: list[str],
    details: dict[str, str],
    make_id: Callable[[], str],
    product_class: str = "",
) -> AlertEvent:
    return AlertEvent(
        alert_id=make_id(),
        kind=kind,
        severity=severity,
        line_id=verdict.line_id,
        station_id=verdict.station_id,
        product_class=product_class,
        summary=summary,
        frame_ids=frame_ids[-MAX_ALERT_FRAMES:],
        details=details,
        raised_at=verdict.decided_at,
    )


class ConsecutiveRejectDetector:
    """N rejects in a row at one station, raised once per streak."""

    def __init__(self, limit: int, options: DetectorOptions | None = None) -> None:
        self.limit = limit
        self.options = options or DetectorOptions()
        # (line, station) -> frame ids of the current streak
        self._streaks: CappedMap[tuple[str, str], list[str]] = self.options.capped_map("reject_streaks")

    def observe(self, verdict: Verdict) -> list[AlertEvent]:
        key = (verdict.line_id, verdict.station_id)
        if verdict.decision != Decision.REJECT:
            self._streaks.pop(key)
            return []
        streak = self._streaks.get(key)
        if streak is None:
            streak = self._streaks[key] = []
        streak.append(verdict.frame_id)
        if len(streak) != self.limit:  # exactly at the limit: once per streak
            del streak[:-MAX_ALERT_FRAMES]
            return []
        return [
            _alert(
                verdict,
                "consecutive_rejects",
                "critical",
                f"{self.limit} consecutive rejects at {verdict.line_id}/{verdict.station_id}",
                list(streak),
                {"count": str(self.limit), "last_class": verdict.product_class},
                self.options.make_id,
                product_class=verdict.product_class,
            )
        ]


class UnknownProductDetector:
    """Parts no trained class recognises; one alert per station per cooldown."""

    def __init__(self, cooldown_s: float, options: DetectorOptions | None = None) -> None:
        self.cooldown_ns = int(cooldown_s * _NS_PER_S)
        self.options = options or DetectorOptions()
        # (line, station) -> when last raised, and the unknown frames seen since (not yet reported)
        self._stations: CappedMap[tuple[str, str], _UnknownState] = self.options.capped_map(
            "unknown_products"
        )

    def observe(self, verdict: Verdict) -> list[AlertEvent]:
        if verdict.product_class != UNKNOWN:
            return []
        key = (verdict.line_id, verdict.station_id)
        state = self._stations.get(key)
        if state is None:
            state = self._stations[key] = _UnknownState()
        state.pending.append(verdict.frame_id)
        state.count += 1
        last = state.last_raised
        if last is not None and verdict.decided_at - last < self.cooldown_ns:
            return []
        state.last_raised = verdict.decided_at
        frames = list(state.pending)
        count = state.count
        state.pending.clear()
        state.count = 0
        return [
            _alert(
                verdict,
                "unknown_product",
                "warning",
                f"unknown product at {verdict.line_id}/{verdict.station_id} ({count} since last alert)",
                frames,
                {"count": str(count), "decision": verdict.decision},
                self.options.make_id,
            )
        ]


@dataclass
class _UnknownState:
    last_raised: int | None = None
    count: int = 0  # unknown frames since the last alert
    pending: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_ALERT_FRAMES))


@dataclass
class _DriftState:
    recent: deque[float]
    baseline: deque[float]
    frames: deque[str]
    raised: bool = False
    # Running sums over the baseline window keep observe() O(1).
    base_sum: float = 0.0
    base_sq: float = 0.0
    recent_sum: float = 0.0
    pushes: int = 0


def _mean_std(total: float, total_sq: float, n: int) -> tuple[float, float]:
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    return mean, math.sqrt(var)


@dataclass
class ScoreDriftDetector:
    """Recent mean score vs the class's rolling baseline at one station."""

    recent_size: int
    baseline_size: int
    threshold: float
    options: DetectorOptions = DetectorOptions()
    # A perfectly constant baseline would make any change infinite drift: floor the deviation.
    min_std: float = 0.01
    _states: CappedMap[tuple[str, str, str], _DriftState] = field(init=False)

    def __post_init__(self) -> None:
        self._states = self.options.capped_map("score_drift")

    def observe(self, verdict: Verdict) -> list[AlertEvent]:
        if verdict.decision == Decision.ERROR or verdict.product_class == UNKNOWN:
            return []
        if not math.isfinite(verdict.score):
            return []
        key = (verdict.line_id, verdict.station_id, verdict.product_class)
        state = self._states.get(key)
        if state is None:
            state = _DriftState(
                deque(maxlen=self.recent_size), deque(maxlen=self.baseline_size), deque(maxlen=8)
            )
            self._states[key] = state
        self._push(state, verdict.score)
        state.frames.append(verdict.frame_id)
        if len(state.baseline) < self.baseline_size or len(state.recent) < self.recent_size:
            return []  # not enough history to judge yet
        base_mean, base_std = _mean_std(state.base_sum, state.base_sq, len(state.baseline))
        recent_mean = state.recent_sum / len(state.recent)
        shift = (recent_mean - base_mean) / max(base_std, self.min_std)
        if state.raised:
            if abs(shift) < self.threshold / 2:
                state.raised = False  # hysteresis: re-arm only once clearly back to normal
            return []
        if abs(shift) < self.threshold:
            return []
        state.raised = True
        direction = "up" if shift > 0 else "down"
        return [
            _alert(
                verdict,
                "score_drift",
                "warning",
                f"score drift {direction} for {verdict.product_class} at {verdict.line_id}/"
                f"{verdict.station_id}: recent mean {recent_mean:.3f} vs baseline {base_mean:.3f}",
                list(state.frames),
                {
                    "recent_mean": f"{recent_mean:.4f}",
                    "baseline_mean": f"{base_mean:.4f}",
                    "baseline_std": f"{base_std:.4f}",
                    "shift_std": f"{shift:.2f}",
                    "recent_n": str(len(state.recent)),
                    "baseline_n": str(len(state.baseline)),
                },
                self.options.make_id,
                product_class=verdict.product_class,
            )
        ]

    @staticmethod
    def _push(state: _DriftState, score: float) -> None:
        # The oldest recent score graduates into the baseline, whose oldest one falls off.
        if len(state.recent) == state.recent.maxlen:
            moved = state.recent[0]
            state.recent_sum -= moved
            if len(state.baseline) == state.baseline.maxlen:
                dropped = state.baseline[0]
                state.base_sum -= dropped
                state.base_sq -= dropped * dropped
            state.baseline.append(moved)
            state.base_sum += moved
            state.base_sq += moved * moved
        state.recent.append(score)
        state.recent_sum += score
        state.pushes += 1
        if state.pushes % 4096 == 0:  # running sums drift with rounding: recompute now and then
            state.recent_sum = math.fsum(state.recent)
            state.base_sum = math.fsum(state.baseline)
            state.base_sq = math.fsum(x * x for x in state.baseline)


class AlertDetector:
    """All operator-alert detectors behind one call: ``observe(verdict) -> list[AlertEvent]``."""

    def __init__(
        self,
        rules: AlertRules | None = None,
        make_id: Callable[[], str] = _new_id,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        """``max_keys``: entries per detector map (stations, or station and class pairs)."""
        self.rules = rules or AlertRules()
        options = DetectorOptions(make_id, max_keys, on_evict)
        self.detectors: list[ConsecutiveRejectDetector | UnknownProductDetector | ScoreDriftDetector] = [
            ConsecutiveRejectDetector(self.rules.consecutive_rejects, options),
            UnknownProductDetector(self.rules.unknown_product_cooldown_s, options),
            ScoreDriftDetector(
                self.rules.drift_recent, self.rules.drift_baseline, self.rules.drift_threshold, options
            ),
        ]

    def observe(self, verdict: Verdict) -> list[AlertEvent]:
        alerts: list[AlertEvent] = []
        for detector in self.detectors:
            alerts.extend(detector.observe(verdict))
        return alerts
