"""The explainer's Prometheus metrics (``lineguard_explainer_*``); labelled counters exist at 0 from
the start for every value the code knows."""

from __future__ import annotations

import re

from shared.messages.codec import REASONS as CODEC_REASONS
from shared.telemetry.metrics import ServiceMetrics

METRICS = ServiceMetrics("explainer")
REGISTRY = METRICS.registry

VLM_OUTCOMES = (
    "ok",
    "rate_limited",
    "server_error",
    "timeout",
    "connection_error",
    "bad_response",
    "rejected",
)
_IMAGE_REASONS = ("empty", "corrupt", "too_large", "unsupported_format", "bad_dimensions")
FALLBACK_REASONS = (
    "no_endpoint",
    "egress_none",
    *(f"image_{reason}" for reason in _IMAGE_REASONS),
    "budget_spent",
    "hold_limit",
    "endpoint_down",
    "vlm_rejected",
    "vlm_invalid_answer",
    "vlm_refused",
    "internal_error",
    "no_answer",
    "other",
)

EVENTS_CONSUMED = METRICS.counter("events_consumed", "Defect events read from the defects topic")
DEAD_LETTERS = METRICS.dead_letters((*CODEC_REASONS, "other"), "Defect events that could not be decoded")
VLM_REQUESTS = METRICS.counter(
    "vlm_requests",
    f"HTTP requests to the VLM endpoint by outcome ({', '.join(VLM_OUTCOMES)})",
    {"outcome": VLM_OUTCOMES},
)
VLM_LATENCY = METRICS.histogram(
    "vlm_request_seconds", "Duration of one VLM request", (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
)
VLM_TOKENS = METRICS.counter(
    "vlm_tokens", "Tokens used, by type (prompt, completion)", {"token_type": ("prompt", "completion")}
)
VLM_COST = METRICS.counter("vlm_cost_usd", "Estimated VLM cost from the price table")
BUDGET_REMAINING = METRICS.gauge("budget_remaining_usd", "What is left of today's budget")
REPORTS = METRICS.counter(
    "reports", "Reports written, by source (vlm, fallback)", {"source": ("vlm", "fallback")}
)
FALLBACKS = METRICS.counter("fallback_reports", "Fallback reports, by reason", {"reason": FALLBACK_REASONS})
DUPLICATES = METRICS.counter("duplicate_events", "Re-delivered events answered from the store")
REPUBLISH_AVOIDED = METRICS.counter(
    "republish_avoided",
    "Stored reports without a publication marker whose message was found on the topic (a crash "
    "between publishing and marking): marked, not sent again",
)
EVICTIONS = METRICS.evictions(("reference_classes",))
REPAIRS = METRICS.counter("answer_repairs", "Repair round-trips for invalid answers")
LOCATION_DISAGREEMENTS = METRICS.counter(
    "location_disagreements", "Reports whose stated location contradicts the heatmap"
)
VLM_DISAGREEMENTS = METRICS.counter(
    "vlm_disagreements",
    "VLM reports whose model found no defect where the scorer decided reject or review (the "
    "decision stands; the report says so)",
)
HELD_EVENTS = METRICS.gauge("held_events", "Events held for a later retry (not committed)")
BREAKER_OPEN = METRICS.gauge("circuit_open", "1 while the circuit breaker is open or half-open")
REPORT_SECONDS = METRICS.histogram(
    "report_seconds",
    "Seconds from the defect verdict to the report",
    (0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600),
)
CONSUMER_LAG = METRICS.consumer_lag("defects")


_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def code_label(value: str) -> str:
    """A reason code as a label value: short snake_case codes pass, anything else (a value that
    could have come off the wire) becomes "other", so the label set stays small and fixed."""
    return value if _CODE.match(value) else "other"
