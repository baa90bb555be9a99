"""Prometheus metrics of the explainer, in their own registry."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

EVENTS_CONSUMED = Counter(
    "lineguard_explainer_events_consumed_total",
    "Defect events read from the defects topic",
    registry=REGISTRY,
)
BAD_EVENTS = Counter(
    "lineguard_explainer_bad_events_total",
    "Defect events that could not be decoded (sent to the DLQ)",
    ["reason"],
    registry=REGISTRY,
)
VLM_REQUESTS = Counter(
    "lineguard_explainer_vlm_requests_total",
    "HTTP requests to the VLM endpoint by outcome (ok, rate_limited, server_error, timeout, "
    "connection_error, rejected)",
    ["outcome"],
    registry=REGISTRY,
)
VLM_LATENCY = Histogram(
    "lineguard_explainer_vlm_request_seconds",
    "Duration of one VLM request",
    buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
    registry=REGISTRY,
)
VLM_TOKENS = Counter(
    "lineguard_explainer_vlm_tokens_total", "Tokens used, by kind", ["kind"], registry=REGISTRY
)
VLM_COST = Counter(
    "lineguard_explainer_vlm_cost_usd_total", "Estimated VLM cost from the price table", registry=REGISTRY
)
BUDGET_REMAINING = Gauge(
    "lineguard_explainer_budget_remaining_usd", "What is left of today's budget", registry=REGISTRY
)
REPORTS = Counter(
    "lineguard_explainer_reports_total",
    "Reports written, by source (vlm, fallback)",
    ["source"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "lineguard_explainer_fallback_reports_total", "Fallback reports, by reason", ["reason"], registry=REGISTRY
)
DUPLICATES = Counter(
    "lineguard_explainer_duplicate_events_total",
    "Re-delivered events answered from the store",
    registry=REGISTRY,
)
REPUBLISH_AVOIDED = Counter(
    "lineguard_explainer_republish_avoided_total",
    "Stored reports without a publication marker whose message was found on the topic (a crash "
    "between publishing and marking): marked, not sent again",
    registry=REGISTRY,
)
REFERENCE_CLASSES_EVICTED = Counter(
    "lineguard_explainer_reference_classes_evicted_total",
    "Classes whose reference pictures were dropped from memory because the cache reached its cap",
    registry=REGISTRY,
)
REPAIRS = Counter(
    "lineguard_explainer_answer_repairs_total", "Repair round-trips for invalid answers", registry=REGISTRY
)
LOCATION_DISAGREEMENTS = Counter(
    "lineguard_explainer_location_disagreements_total",
    "Reports whose stated location contradicts the heatmap",
    registry=REGISTRY,
)
VLM_DISAGREEMENTS = Counter(
    "lineguard_explainer_vlm_disagreements_total",
    "VLM reports whose model found no defect where the scorer decided reject or review (the "
    "decision stands; the report says so)",
    registry=REGISTRY,
)
HELD_EVENTS = Gauge(
    "lineguard_explainer_held_events", "Events held for a later retry (not committed)", registry=REGISTRY
)
BREAKER_OPEN = Gauge(
    "lineguard_explainer_circuit_open", "1 while the circuit breaker is open or half-open", registry=REGISTRY
)
REPORT_SECONDS = Histogram(
    "lineguard_explainer_report_seconds",
    "Seconds from the defect verdict to the report",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "lineguard_explainer_consumer_lag",
    "Messages behind the end of the defects topic",
    ["partition"],
    registry=REGISTRY,
)


_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def code_label(value: str) -> str:
    """A reason code as a label value: short snake_case codes pass, anything else (a value that
    could have come off the wire) becomes "other", so the label set stays small and fixed."""
    return value if _CODE.match(value) else "other"
