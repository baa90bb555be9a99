"""OpenTelemetry tracing with W3C trace context carried in Kafka headers.

A frame's producer injects ``traceparent``; each consumer continues that trace (one span per
message) or links to it (one span per micro-batch, linked to every frame it holds).
"""

from __future__ import annotations

from collections.abc import Sequence

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
