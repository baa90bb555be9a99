"""Structured logs: one JSON object per line on stderr, one line per event.

Values are rendered with ``repr``-free JSON; bytes are never written (only their length), and keys
that look like secrets are masked, so an accidental ``api_key=...`` never reaches a log file. A line
written inside a span carries its ``trace_id`` and ``span_id`` (hex, as trace back ends show them),
so a log line leads to its frame's trace.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Protocol

from opentelemetry import trace

_SECRET_MARKERS = ("key", "secret", "password", "token", "authorization", "credential")
_service = "lineguard"


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": _service,
            "logger": record.name,
            "event": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(safe_fields(fields))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Mask secret-looking keys and replace bytes by their length."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if any(marker in name.lower() for marker in _SECRET_MARKERS) and not name.endswith("_tokens"):
            out[name] = "***" if value else value
        elif isinstance(value, bytes | bytearray | memoryview):
            out[name] = f"<{len(value)} bytes>"
        else:
            out[name] = value
    return out


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines; idempotent."""
    global _service
    _service = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every group join; keep its warnings.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


class _KafkaRecord(Protocol):
    """What ``record_position`` reads of a consumed record (aiokafka's ``ConsumerRecord``)."""

    topic: str
    partition: int
    offset: int


def record_position(record: _KafkaRecord) -> dict[str, Any]:
    """Where a Kafka record is (topic, partition, offset), as the fields of a log line about it: enough
    to find it again, and never its key or value."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"fields": fields})
