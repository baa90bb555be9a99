"""The scorer's operator-alert rules (services/scorer/alerts.py): pure, driven by verdict timestamps."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from services.scorer.alerts import (
    AlertDetector,
    AlertRules,
    ConsecutiveRejectDetector,
    ScoreDriftDetector,
    UnknownProductDetector,
)
from shared.messages.codec import decode, encode
from shared.messages.schemas import AlertEvent, Verdict
from shared.settings import AlertsSettings
from tests.support import messages as build

S = 1_000_000_000
_counter = itertools.count()


def verdict(decision: str = "pass", *, t: float = 0.0, station: str = "st-1", **fields: Any) -> Verdict:
    """A verdict on a new frame at ``station``, decided ``t`` seconds into the run."""
    return build.verdict(
        f"f{next(_counter)}", decision, station_id=station, captured_at=int(t * S), latency_ms=0.001, **fields
    )


def test_consecutive_rejects_raise_once_per_streak_and_rearm():
    det = ConsecutiveRejectDetector(3)
    out = [det.observe(verdict("reject")) for _ in range(5)]
    assert [len(a) for a in out] == [0, 0, 1, 0, 0]
    alert = out[2][0]
    assert alert.kind == "consecutive_rejects" and alert.severity == "critical"
    assert len(alert.frame_ids) == 3 and alert.details["count"] == "3"
    assert det.observe(verdict("pass")) == []
    again = [det.observe(verdict("reject")) for _ in range(3)]
    assert [len(a) for a in again] == [0, 0, 1]


def test_consecutive_rejects_are_counted_per_station():
    det = ConsecutiveRejectDetector(2)
    assert det.observe(verdict("reject", station="a")) == []
    assert det.observe(verdict("reject", station="b")) == []
    assert det.observe(verdict("pass", station="b")) == []
    (alert,) = det.observe(verdict("reject", station="a"))
    assert alert.station_id == "a"
    assert det.observe(verdict("reject", station="b")) == []


def test_review_breaks_a_reject_streak():
    det = ConsecutiveRejectDetector(2)
    det.observe(verdict("reject"))
    det.observe(verdict("review"))
    assert det.observe(verdict("reject")) == []


def test_unknown_product_cooldown_counts_what_it_held_back():
    det = UnknownProductDetector(cooldown_s=10)
    (first,) = det.observe(verdict("review", product="unknown", t=0))
    assert first.kind == "unknown_product" and first.details["count"] == "1"
    assert det.observe(verdict("review", product="unknown", t=3)) == []
    assert det.observe(verdict("review", product="unknown", t=6)) == []
    assert det.observe(verdict("pass", product="washer", t=7)) == []
    (second,) = det.observe(verdict("review", product="unknown", t=10.5))
    assert second.details["count"] == "3" and len(second.frame_ids) == 3


def test_unknown_product_per_station():
    det = UnknownProductDetector(cooldown_s=60)
    assert len(det.observe(verdict("review", product="unknown", station="a"))) == 1
    assert len(det.observe(verdict("review", product="unknown", station="b"))) == 1


def test_score_drift_needs_history_then_fires_once_and_rearms():
    rng = random.Random(0)
    det = ScoreDriftDetector(recent_size=10, baseline_size=40, threshold=2.0)
    fired = []
    for _ in range(200):  # stable process: no alert
        fired += det.observe(verdict(score=0.2 + rng.gauss(0, 0.02)))
    assert fired == []
    for _ in range(30):  # the process shifts up by 5 standard deviations
        fired += det.observe(verdict(score=0.3 + rng.gauss(0, 0.02)))
    assert len(fired) == 1
    alert = fired[0]
    assert alert.kind == "score_drift" and alert.product_class == "washer"
    assert float(alert.details["shift_std"]) >= 2.0 and "up" in alert.summary
    # The new level becomes the baseline: the alert re-arms and stays quiet.
    for _ in range(200):
        fired += det.observe(verdict(score=0.3 + rng.gauss(0, 0.02)))
    assert len(fired) == 1
    for _ in range(30):  # back down: a second drift, downwards
        fired += det.observe(verdict(score=0.2 + rng.gauss(0, 0.02)))
    assert len(fired) == 2 and "down" in fired[1].summary


def test_score_drift_ignores_errors_and_unknowns_and_separates_classes():
    det = ScoreDriftDetector(recent_size=5, baseline_size=10, threshold=1.0)
    for _ in range(20):
        assert det.observe(verdict(score=0.2, product="washer")) == []
    for _ in range(10):  # another class at a different level is not a drift of washer
        assert det.observe(verdict(score=0.9, product="pcb")) == []
        assert det.observe(verdict("error", score=5.0, product="washer")) == []
        assert det.observe(verdict("review", score=5.0, product="unknown")) == []


def test_detector_combines_and_alerts_survive_the_codec():
    ids = (f"id{i}" for i in itertools.count())
    det = AlertDetector(
        AlertRules(consecutive_rejects=2, unknown_product_cooldown_s=0), make_id=lambda: next(ids)
    )
    alerts = det.observe(verdict("review", product="unknown"))
    alerts += det.observe(verdict("reject"))
    alerts += det.observe(verdict("reject"))
    assert [a.kind for a in alerts] == ["unknown_product", "consecutive_rejects"]
    assert [a.alert_id for a in alerts] == ["id0", "id1"]
    for alert in alerts:
        assert decode(encode(alert), AlertEvent) == alert


def test_rules_are_validated():
    with pytest.raises(ValueError):
        AlertRules(consecutive_rejects=0)
    with pytest.raises(ValueError):
        AlertRules(drift_threshold=0)


def test_rules_come_from_the_alerts_settings_with_the_same_defaults():
    assert AlertRules.from_settings(AlertsSettings()) == AlertRules()
    tuned = AlertsSettings(
        consecutive_rejects=7, unknown_product_cooldown_s=5, drift_recent=20, drift_threshold=2.5
    )
    assert AlertRules.from_settings(tuned) == AlertRules(
        consecutive_rejects=7, unknown_product_cooldown_s=5, drift_recent=20, drift_threshold=2.5
    )
