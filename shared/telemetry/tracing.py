"""OpenTelemetry tracing with W3C trace context carried in Kafka headers.

A frame's producer injects ``traceparent``; each consumer continues that trace (one span per
message) or links to it (one span per micro-batch, linked to every frame it holds). Kafka spans carry
the OpenTelemetry messaging semantic conventions, set in one place: ``set_messaging_attributes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.errors import ConfigError

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = ("traceparent", "tracestate")
# A header value longer than this is not a trace context; ignore it rather than parse it.
_MAX_HEADER_BYTES = 512

Headers = list[tuple[str, bytes]]


def setup_tracing(service: str, exporter: str = "none") -> None:
    """Install the global tracer provider. ``none`` still creates real spans (for context
    propagation); they are just not exported."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    span_exporter: SpanExporter | None
    if exporter == "none":
        span_exporter = None
    elif exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # pinned in requirements.lock; a trimmed install may lack it
            raise ConfigError(
                "LINEGUARD_OTEL_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http installed"
            ) from exc
        span_exporter = OTLPSpanExporter()
    else:
        raise ConfigError(f"LINEGUARD_OTEL_EXPORTER: {exporter!r} is not none, console or otlp")
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)


def get_tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: Headers | None = None, context: otel_context.Context | None = None) -> Headers:
    """Return ``headers`` plus the trace context of ``context`` (default: the current one)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    kept = [(k, v) for k, v in (headers or []) if k not in _TRACE_HEADERS]
    return kept + [(k, v.encode("ascii")) for k, v in carrier.items()]


def extract_context(headers: Sequence[tuple[str, bytes | None]] | None) -> otel_context.Context:
    """The trace context carried in Kafka headers; an empty context if absent or malformed (a header
    value may be None: Kafka allows null values)."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if key in _TRACE_HEADERS and value is not None and len(value) <= _MAX_HEADER_BYTES:
            try:
                carrier[key] = bytes(value).decode("ascii")
            except UnicodeDecodeError:
                continue
    return _PROPAGATOR.extract(carrier)


def span_link(headers: Sequence[tuple[str, bytes | None]] | None) -> trace.Link | None:
    """A link to the span that produced a message, for batch spans that cover many messages."""
    span_context = trace.get_current_span(extract_context(headers)).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None


MessagingOperation = Literal["publish", "receive", "process"]
# A key longer than this, or not printable text, is not an id: it is left out of the span.
_MAX_KEY_CHARS = 256


@dataclass(frozen=True)
class ConsumedMessage:
    """Where a consumed record was, for its span's attributes (no Kafka types: cores take it too)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None


def set_messaging_attributes(
    span: trace.Span,
    operation: MessagingOperation,
    destination: str,
    *,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    batch_size: int | None = None,
) -> None:
    """The messaging semantic-convention attributes of a Kafka span (its kind, PRODUCER for
    ``publish`` and CONSUMER otherwise, is given when the span starts). The key is recorded only
    when it is a short printable id (camera, station); a record's value never is."""
    span.set_attribute("messaging.system", "kafka")
    span.set_attribute("messaging.operation.type", operation)
    span.set_attribute("messaging.operation.name", operation)
    span.set_attribute("messaging.destination.name", destination)
    text = _printable_key(key)
    if text is not None:
        span.set_attribute("messaging.kafka.message.key", text)
    if partition is not None:
        span.set_attribute("messaging.destination.partition.id", str(partition))
    if offset is not None:
        span.set_attribute("messaging.kafka.offset", offset)
    if batch_size is not None:
        span.set_attribute("messaging.batch.message_count", batch_size)


def set_consumed_attributes(span: trace.Span, message: ConsumedMessage) -> None:
    """``set_messaging_attributes`` for processing one consumed record."""
    set_messaging_attributes(
        span,
        "process",
        message.topic,
        key=message.key,
        partition=message.partition,
        offset=message.offset,
    )


def _printable_key(key: bytes | None) -> str | None:
    if key is None or len(key) > _MAX_KEY_CHARS:
        return None
    try:
        text = bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None
