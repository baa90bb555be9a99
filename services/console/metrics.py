"""Prometheus metrics of ``lineguard console``, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry()

RECORDS = Counter("lineguard_console_records", "Records read from each topic", ["topic"], registry=REGISTRY)
BAD_RECORDS = Counter(
    "lineguard_console_bad_records",
    "Records skipped because they did not decode (by topic and the codec's reason)",
    ["topic", "reason"],
    registry=REGISTRY,
)
FEEDBACK = Counter(
    "lineguard_console_feedback",
    "Judgements sent to the feedback topic, by label",
    ["label"],
    registry=REGISTRY,
)
REFUSED_WRITES = Counter(
    "lineguard_console_refused_writes",
    "Writes refused (unauthenticated; csrf: a stale or cross-site form; invalid: a judgement that does "
    "not check)",
    ["why"],
    registry=REGISTRY,
)
SIGN_INS = Counter(
    "lineguard_console_sign_ins",
    "Token sign-ins by outcome (ok, refused, throttled)",
    ["outcome"],
    registry=REGISTRY,
)
BAD_PICTURES = Counter(
    "lineguard_console_bad_pictures",
    "Held frames that could not be shown (by the image decoder's reason)",
    ["reason"],
    registry=REGISTRY,
)
FRAMES_SAVED = Counter(
    "lineguard_console_frames_saved", "Judged frames written to the frames store", registry=REGISTRY
)
LIVE_CLIENTS = Gauge("lineguard_console_live_pages", "Pages following the line live", registry=REGISTRY)
