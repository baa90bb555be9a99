"""Prometheus metrics of ``lineguard alerts``, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
    "Webhook posts by outcome (delivered, retry, gave_up, rejected)",
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
RETRYING = Gauge("lineguard_alerts_retrying", "1 while a delivery is being retried", registry=REGISTRY)
