"""The chaos campaign's accounts of the downstream topics and of the PLC, as plain functions of what
was read back (no Kafka, no processes), so that each rule can be tested on its own.

- ``downstream_account``: every reject/review verdict has exactly one defect event and one report;
  no defect event or report for a frame without such a verdict; no duplicates on ``defects``,
  ``reports`` or ``alerts``.
- ``plc_account``: what the simulated PLC showed against the committed verdicts. The PLC may show a
  reject or a fail-safe for any frame (that is the safe side); it must never show ``pass`` for a
  frame whose committed verdict is not ``pass``, and its per-station pass counter must never exceed
  the station's committed pass verdicts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.plc_bridge.registers import DECISION_CODES
from shared.engine.config import Decision

SHOWN = 20  # examples listed per problem
CODE_NAMES = {code: name for name, code in DECISION_CODES.items()}


def repeated(keys: Iterable[str]) -> list[str]:
    """The keys that occur more than once, sorted."""
    return sorted(key for key, count in Counter(keys).items() if count > 1)


def downstream_account(
    verdicts: Mapping[str, str],
    defect_frames: Iterable[str],
    report_frames: Iterable[str],
    alert_ids: Iterable[str],
) -> dict[str, Any]:
    """``verdicts``: committed decision by frame id; the frame ids of the defect events and reports
    read, and the alert ids read (each as often as it was read)."""
    defects, reports = Counter(defect_frames), Counter(report_frames)
    alerts = Counter(alert_ids)
    defective = sorted(frame for frame, decision in verdicts.items() if Decision(decision).is_defect)
    without_defect = [f for f in defective if defects[f] == 0]
    without_report = [f for f in defective if reports[f] == 0]
    wanted = set(defective)
    return {
        "defect_verdicts": len(defective),
        "defect_events": sum(defects.values()),
        "reports": sum(reports.values()),
        "alerts": sum(alerts.values()),
        "verdicts_without_defect_event": without_defect[:SHOWN],
        "verdicts_without_defect_event_count": len(without_defect),
        "verdicts_without_report": without_report[:SHOWN],
        "verdicts_without_report_count": len(without_report),
        "duplicate_defect_events": repeated(defects.elements())[:SHOWN],
        "duplicate_reports": repeated(reports.elements())[:SHOWN],
        "duplicate_alerts": repeated(alerts.elements())[:SHOWN],
        "defect_events_without_verdict": sorted(set(defects) - wanted)[:SHOWN],
        "reports_without_verdict": sorted(set(reports) - wanted)[:SHOWN],
    }


@dataclass(frozen=True)
class PlcSample:
    """One station's registers as read from the simulated PLC (a read that two reads 50 ms apart
    agreed on, so not one taken half-way through the bridge's write of a station)."""

    at: float  # time.time()
    station: str
    decision_code: int
    last_frame_id: str
    pass_count: int


def plc_account(
    verdicts: Mapping[str, tuple[str, str]],
    samples: Iterable[PlcSample],
    final_pass_counts: Mapping[str, int],
) -> dict[str, Any]:
    """``verdicts``: committed (station, decision) by frame id; the samples taken during the run;
    each station's pass counter at the end (after the bridge caught up).

    A sample showing ``pass`` must name a frame whose committed verdict is ``pass`` (same station);
    a sample showing reject, review or error must name a frame with that committed decision; a
    fail-safe may name any frame (the bridge keeps the last frame id it read, decided safe)."""
    committed_pass = Counter(station for station, decision in verdicts.values() if decision == Decision.PASS)
    pass_unbacked: list[str] = []
    mismatched: list[str] = []
    shown: Counter[str] = Counter()
    count = 0
    for sample in samples:
        count += 1
        name = CODE_NAMES.get(sample.decision_code, f"code {sample.decision_code}")
        shown[name] += 1
        if not sample.last_frame_id or name in ("none", "fail_safe"):
            continue
        station, decision = verdicts.get(sample.last_frame_id, ("", ""))
        if station == sample.station and decision == name:
            continue
        what = f"{sample.station}: {sample.last_frame_id} shown {name}, committed {decision or 'nothing'}"
        (pass_unbacked if name == Decision.PASS else mismatched).append(what)
    over = {
        station: {"plc": count_, "committed": committed_pass[station]}
        for station, count_ in sorted(final_pass_counts.items())
        if count_ > committed_pass[station]
    }
    return {
        "plc_samples": count,
        "plc_samples_by_decision": dict(sorted(shown.items())),
        "plc_pass_without_committed_pass": pass_unbacked[:SHOWN],
        "plc_pass_without_committed_pass_count": len(pass_unbacked),
        "plc_decision_mismatches": mismatched[:SHOWN],
        "plc_pass_counts": dict(sorted(final_pass_counts.items())),
        "committed_pass_verdicts": dict(sorted(committed_pass.items())),
        "plc_pass_count_over_committed": over,
    }


DOWNSTREAM_PROBLEMS = (
    "verdicts_without_defect_event",
    "verdicts_without_report",
    "duplicate_defect_events",
    "duplicate_reports",
    "duplicate_alerts",
    "defect_events_without_verdict",
    "reports_without_verdict",
    "plc_pass_without_committed_pass",
    "plc_decision_mismatches",
    "plc_pass_count_over_committed",
)


def downstream_problems(name: str, result: Mapping[str, Any]) -> list[str]:
    """The failed checks of a run's downstream and PLC accounts, one line each."""
    return [f"{name}: {key}: {list(result[key])[:5]}" for key in DOWNSTREAM_PROBLEMS if result.get(key)]


def changes_after(at: float, samples: Iterable[tuple[float, int]]) -> list[float]:
    """The times at which a value sampled after ``at`` (the PLC's heartbeat) differs from the sample
    before it, counting only pairs of samples both taken after ``at``: a change between a sample
    before a bridge's kill and one after it may be the killed bridge's last write."""
    times, last = [], None
    for when, value in samples:
        if when <= at:
            continue
        if last is not None and value != last:
            times.append(when)
        last = value
    return times


def fault_timeline(what: str) -> str:
    """Which output shows the line working again after a fault of kind ``what``."""
    if what.startswith("explainer"):
        return "reports"
    if what.startswith("plc bridge"):
        return "plc_heartbeat"
    return "verdicts"


def seconds_to_next(at: float, times: Iterable[float]) -> float | None:
    """Seconds from ``at`` to the first of ``times`` after it (None: nothing came after it)."""
    after = [t for t in times if t > at]
    return round(min(after) - at, 2) if after else None
