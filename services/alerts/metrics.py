"""Prometheus metrics of ``lineguard alerts``, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.messages.schemas import ALERT_KINDS

REGISTRY = CollectorRegistry()

ALERTS_CONSUMED = Counter(
    "lineguard_alerts_consumed",
    "Alert events read from the alerts topic, by kind",
    ["kind"],
    registry=REGISTRY,
)
ALERTS_SUPPRESSED = Counter(
    "lineguard_alerts_suppressed",
    "Alerts not sent because they repeat one inside the window",
    ["kind"],
    registry=REGISTRY,
)
ALERTS_HELD = Counter(
    "lineguard_alerts_rate_limited", "Alerts held by the rate limit and sent in a digest", registry=REGISTRY
)
DELIVERIES = Counter(
    "lineguard_alerts_deliveries",
    "Webhook posts by outcome (delivered, retry, gave_up, rejected; logged: no webhook configured)",
    ["outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "lineguard_alerts_dead_letters", "Alert records sent to the DLQ, by reason", ["reason"], registry=REGISTRY
)
DELIVERY_SECONDS = Histogram(
    "lineguard_alerts_delivery_seconds",
    "Seconds from the alert being raised to its delivery to the webhook",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
LEDGER_ENTRIES = Gauge(
    "lineguard_alerts_ledger_entries",
    "Alerts in the delivery ledger after its last compaction",
    registry=REGISTRY,
)
LEDGER_EVICTIONS = Counter(
    "lineguard_alerts_ledger_evictions",
    "Ledger entries dropped because the ledger reached its cap (max_tracked)",
    registry=REGISTRY,
)
DEDUP_EVICTIONS = Counter(
    "lineguard_alerts_dedup_evictions",
    "De-duplication keys (kind, line, station, class) forgotten because the map reached its cap",
    registry=REGISTRY,
)
WEBHOOK_CONFIGURED = Gauge(
    "lineguard_alerts_webhook_configured",
    "1 when a webhook is configured; 0: alerts are only logged (no webhook URL)",
    registry=REGISTRY,
)
RETRYING = Gauge("lineguard_alerts_retrying", "1 while a delivery is being retried", registry=REGISTRY)


def kind_label(kind: str) -> str:
    """An alert kind as a label value: one of the known kinds, else "other" (the label set stays
    fixed whatever arrives on the wire)."""
    return kind if kind in ALERT_KINDS else "other"
