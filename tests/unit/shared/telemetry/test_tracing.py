from opentelemetry import trace

from shared.telemetry.tracing import extract_context, inject_headers, setup_tracing, span_link


def test_trace_context_round_trips_through_kafka_headers() -> None:
    setup_tracing("test", "none")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("camera") as span:
        headers = inject_headers([("other", b"x")])
        sent = span.get_span_context()
    names = [k for k, _ in headers]
    assert names[0] == "other" and "traceparent" in names
    received = trace.get_current_span(extract_context(headers)).get_span_context()
    assert received.trace_id == sent.trace_id and received.span_id == sent.span_id
    link = span_link(headers)
    assert link is not None and link.context.trace_id == sent.trace_id


def test_reinjecting_replaces_the_old_traceparent() -> None:
    setup_tracing("test", "none")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("a"):
        first = inject_headers()
    with tracer.start_as_current_span("b"):
        second = inject_headers(first)
    assert [k for k, _ in second].count("traceparent") == 1
    assert second != first


def test_malformed_or_missing_trace_headers_give_no_link() -> None:
    assert span_link(None) is None
    assert span_link([("traceparent", b"garbage")]) is None
    assert span_link([("traceparent", b"\xff\xfe")]) is None
    assert span_link([("traceparent", b"0" * 4096)]) is None


def test_the_otlp_exporter_sends_spans_to_a_real_otlp_http_receiver() -> None:
    """``LINEGUARD_OTEL_EXPORTER=otlp`` (the documented setting) in a fresh process: its spans reach
    an OTLP/HTTP receiver on localhost, flushed when the process exits."""
    import subprocess
    import sys

    from tests.support.otlp_receiver import OtlpReceiver
    from tests.support.processes import process_env

    program = (
        "from opentelemetry import trace\n"
        "from shared.telemetry.tracing import setup_tracing\n"
        "setup_tracing('probe', 'otlp')\n"
        "with trace.get_tracer('t').start_as_current_span('outer'):\n"
        "    with trace.get_tracer('t').start_as_current_span('inner'):\n"
        "        pass\n"
    )
    with OtlpReceiver() as receiver:
        env = process_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        spans = {s.name: s for s in receiver.received()}
    assert set(spans) == {"outer", "inner"}
    assert {s.service for s in spans.values()} == {"probe"}
    assert spans["inner"].trace_id == spans["outer"].trace_id
    assert spans["inner"].parent_span_id == spans["outer"].span_id


def _finished_span(**attributes: object) -> dict[str, object]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.telemetry.tracing import set_messaging_attributes

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("send", kind=trace.SpanKind.PRODUCER) as span:
        set_messaging_attributes(span, **attributes)  # type: ignore[arg-type]
    (finished,) = exporter.get_finished_spans()
    return dict(finished.attributes or {})


def test_messaging_attributes_follow_the_semantic_conventions() -> None:
    got = _finished_span(
        operation="process", destination="lg.frames", key=b"cam-1", partition=3, offset=42, batch_size=None
    )
    assert got == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "lg.frames",
        "messaging.kafka.message.key": "cam-1",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 42,
    }
    batch = _finished_span(operation="publish", destination="lg.verdicts", batch_size=8)
    assert batch["messaging.batch.message_count"] == 8 and "messaging.kafka.offset" not in batch


def test_a_key_that_is_not_a_short_printable_id_stays_out_of_the_span() -> None:
    for key in (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, b"\xff\xfe", b"a" * 257, b"line\nbreak"):
        got = _finished_span(operation="publish", destination="lg.frames", key=key)
        assert "messaging.kafka.message.key" not in got, key
