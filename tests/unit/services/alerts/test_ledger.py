"""The delivery ledger: what went out survives a restart, a torn last line, and stays bounded."""

from __future__ import annotations

from pathlib import Path

from services.alerts import metrics
from services.alerts.ledger import DELIVERED, SENDING, DeliveryLedger, dedup_key
from tests.support.messages import alert_event


def ledger(path: Path, **kwargs: float) -> DeliveryLedger:
    return DeliveryLedger(
        path, retention_s=kwargs.get("retention_s", 3600), max_entries=int(kwargs.get("max_entries", 100))
    )


def test_states_survive_a_restart_and_a_line_torn_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deliveries.jsonl"
    first = ledger(path)
    a, b = alert_event("a-1", raised_at=1_000), alert_event("a-2", raised_at=2_000, station="st-2")
    first.record([a, b], SENDING, "key-ab")
    first.record([a], DELIVERED, "key-ab")
    first.close()
    with open(path, "a") as handle:
        handle.write('{"alert_id": "a-3", "state": "deliv')  # SIGKILL in the middle of a write
    again = ledger(path)
    assert again.get("a-1") is not None and again.get("a-1").state == DELIVERED  # type: ignore[union-attr]
    entry = again.get("a-2")
    assert entry is not None and entry.state == SENDING and entry.key == "key-ab"
    assert entry.dedup == dedup_key(b) and entry.raised_at == 2_000
    assert again.get("a-3") is None
    again.close()


def test_the_ledger_is_capped_and_old_entries_expire(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.jsonl"
    before = metrics.REGISTRY.get_sample_value("lineguard_alerts_evictions_total", {"map": "ledger"}) or 0.0
    small = ledger(path, max_entries=3)
    for n in range(5):
        small.record([alert_event(f"c-{n}", raised_at=n)], DELIVERED, f"k{n}")
    assert [e.alert_id for e in small.entries()] == ["c-2", "c-3", "c-4"]
    assert (
        metrics.REGISTRY.get_sample_value("lineguard_alerts_evictions_total", {"map": "ledger"}) == before + 2
    )
    small.close()
    expired = DeliveryLedger(path, retention_s=60, max_entries=3, clock=lambda: 1e12)
    assert list(expired.entries()) == [] and path.read_text() == ""
    expired.close()


def test_kind_labels_stay_in_the_known_set() -> None:
    assert metrics.kind_label("score_drift") == "score_drift"
    assert metrics.kind_label("x" * 300) == "other"
