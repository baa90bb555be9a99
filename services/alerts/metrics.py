"""The alerts service's Prometheus metrics (``lineguard_alerts_*``); labelled counters exist at 0
from the start for every kind, outcome and reason, so the first alert delivered is an increase."""

from __future__ import annotations

from shared.messages.codec import REASONS as CODEC_REASONS
from shared.messages.schemas import ALERT_KINDS
from shared.telemetry.metrics import ServiceMetrics

METRICS = ServiceMetrics("alerts")
REGISTRY = METRICS.registry

KINDS = (*ALERT_KINDS, "other")
DELIVERY_OUTCOMES = ("delivered", "retry", "gave_up", "rejected", "logged")

EVENTS_CONSUMED = METRICS.counter(
    "events_consumed", "Alert events read from the alerts topic, by kind", {"kind": KINDS}
)
SUPPRESSED = METRICS.counter(
    "suppressed", "Alerts not sent because they repeat one inside the window", {"kind": KINDS}
)
RATE_LIMITED = METRICS.counter("rate_limited", "Alerts held by the rate limit and sent in a digest")
DELIVERIES = METRICS.counter(
    "deliveries",
    "Webhook posts by outcome (delivered, retry, gave_up, rejected; logged: no webhook configured)",
    {"outcome": DELIVERY_OUTCOMES},
)
DEAD_LETTERS = METRICS.dead_letters(
    (*CODEC_REASONS, "webhook_rejected", "webhook_unreachable"), "Alert records"
)
DELIVERY_SECONDS = METRICS.histogram(
    "delivery_seconds",
    "Seconds from the alert being raised to its delivery to the webhook",
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
LEDGER_ENTRIES = METRICS.gauge("ledger_entries", "Alerts in the delivery ledger after its last compaction")
# ledger: the delivery ledger reached max_tracked; dedup: the (kind, line, station, class) keys.
EVICTIONS = METRICS.evictions(("ledger", "dedup"))
WEBHOOK_CONFIGURED = METRICS.gauge(
    "webhook_configured", "1 when a webhook is configured; 0: alerts are only logged (no webhook URL)"
)
RETRYING = METRICS.gauge("retrying", "1 while a delivery is being retried")


def kind_label(kind: str) -> str:
    """An alert kind as a label value: one of the known kinds, else "other" (the label set stays
    fixed whatever arrives on the wire)."""
    return kind if kind in ALERT_KINDS else "other"
