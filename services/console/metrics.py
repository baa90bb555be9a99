"""The console's Prometheus metrics (``lineguard_console_*``); labelled counters exist at 0 from the
start for every topic, judgement, outcome and reason the code knows."""

from __future__ import annotations

from shared.messages.codec import REASONS as CODEC_REASONS
from shared.messages.schemas import FEEDBACK_LABELS
from shared.telemetry.metrics import ServiceMetrics

METRICS = ServiceMetrics("console")
REGISTRY = METRICS.registry

TOPICS = ("verdicts", "defects", "reports", "models", "feedback")  # what the console reads
IMAGE_REASONS = ("empty", "corrupt", "too_large", "unsupported_format", "bad_dimensions")

RECORDS = METRICS.counter("records_consumed", "Records read from each topic", {"topic": TOPICS})
BAD_RECORDS = METRICS.counter(
    "bad_records",
    "Records skipped because they did not decode (by topic and the codec's reason)",
    {"topic": TOPICS, "reason": CODEC_REASONS},
)
FEEDBACK = METRICS.counter(
    "feedback", "Judgements sent to the feedback topic (defect, good)", {"judgement": FEEDBACK_LABELS}
)
REFUSED_WRITES = METRICS.counter(
    "refused_writes",
    "Writes refused (unauthenticated; csrf: a stale or cross-site form; invalid: a judgement that does "
    "not check)",
    {"reason": ("unauthenticated", "csrf", "invalid")},
)
SIGN_INS = METRICS.counter(
    "sign_ins",
    "Token sign-ins by outcome (ok, refused, throttled)",
    {"outcome": ("ok", "refused", "throttled")},
)
BAD_PICTURES = METRICS.counter(
    "bad_pictures",
    "Held frames that could not be shown (by the image decoder's reason)",
    {"reason": IMAGE_REASONS},
)
FRAMES_SAVED = METRICS.counter("frames_saved", "Judged frames written to the frames store")
LIVE_CLIENTS = METRICS.gauge("live_pages", "Pages following the line live")
