"""Bounded memory (issue 9): maps keyed by wire values are capped, label values validated."""

from __future__ import annotations

from collections import Counter

from services.scorer.alerts import AlertDetector, AlertRules
from services.scorer.labels import INVALID, OTHER, LabelValues
from shared.messages.schemas import Verdict
from tests.support import messages


def verdict(station: str, product: str = "washer", decision: str = "reject", t: int = 0) -> Verdict:
    return messages.verdict(
        f"f-{station}-{t}",
        decision,
        score=0.7,
        raw_score=3.0,
        threshold=2.0,
        product=product,
        model_version="v",
        captured_at=t,
        latency_ms=0.0,  # decided at t
        line_id="line",
        station_id=station,
        camera_id="cam",
    )


def test_alert_state_keeps_at_most_the_cap_of_stations_and_counts_evictions() -> None:
    evicted: Counter[str] = Counter()
    detector = AlertDetector(
        AlertRules(consecutive_rejects=3), max_keys=50, on_evict=lambda m: evicted.update([m])
    )
    for i in range(1000):  # a producer inventing a station per frame
        detector.observe(verdict(f"station-{i}", product="unknown" if i % 2 else "washer", t=i))
    assert len(detector.detectors[0]._streaks) == 50  # type: ignore[union-attr]
    assert len(detector.detectors[1]._stations) <= 50  # type: ignore[union-attr]
    assert len(detector.detectors[2]._states) <= 50  # type: ignore[union-attr]
    assert evicted["reject_streaks"] == 950 and evicted["unknown_products"] > 0 and evicted["score_drift"] > 0


def test_a_station_seen_again_keeps_its_streak() -> None:
    detector = AlertDetector(AlertRules(consecutive_rejects=3), max_keys=2)
    raised = []
    for t in range(3):
        raised += detector.observe(verdict("a", t=t))
        detector.observe(verdict(f"x{t}", t=t))  # other stations come and go; "a" stays recent
    assert [a.kind for a in raised] == ["consecutive_rejects"]


def test_label_values_from_the_wire_are_validated_and_capped() -> None:
    capped: Counter[str] = Counter()
    label = LabelValues("station_id", cap=3, on_capped=lambda name: capped.update([name]))
    assert [label(v) for v in ["st-1", "st-2", "st 3", "x" * 65, "st-3", "st-4", "st-1"]] == [
        "st-1",
        "st-2",
        INVALID,
        INVALID,
        "st-3",
        OTHER,
        "st-1",
    ]
    assert capped["station_id"] == 3
