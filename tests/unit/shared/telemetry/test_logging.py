import json
import logging

import pytest
from aiokafka.structs import ConsumerRecord

from shared.telemetry.logging import JsonLineFormatter, log_event, record_position, setup_logging


def test_one_json_line_per_event_without_secrets_or_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("scorer", "INFO")
    log_event(
        logging.getLogger("t"),
        "frame_rejected",
        frame_id="f1",
        image=b"\x00" * 10,
        api_key="sk-123",
        prompt_tokens=5,
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "frame_rejected" and record["service"] == "scorer"
    assert record["frame_id"] == "f1"
    assert record["image"] == "<10 bytes>"
    assert record["api_key"] == "***"
    assert record["prompt_tokens"] == 5
    assert "sk-123" not in lines[0]


def test_a_line_inside_a_span_carries_its_trace_and_span_ids() -> None:
    import io

    from opentelemetry.sdk.trace import TracerProvider

    # Its own provider, logger and stream: whatever tracing or logging earlier tests set up globally.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("lineguard.test.trace_ids")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with TracerProvider().get_tracer("t").start_as_current_span("frame") as span:
        log_event(logger, "inside")
        context = span.get_span_context()
    log_event(logger, "outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().strip().splitlines())
    assert inside["trace_id"] == format(context.trace_id, "032x") and len(inside["trace_id"]) == 32
    assert inside["span_id"] == format(context.span_id, "016x") and len(inside["span_id"]) == 16
    assert "trace_id" not in outside and "span_id" not in outside


def test_a_record_is_logged_by_its_position_never_its_key_or_value() -> None:
    record = ConsumerRecord("lg.frames", 3, 41, 0, 0, b"cam-1", b"pixels", None, 5, 6, ())
    assert record_position(record) == {"topic": "lg.frames", "partition": 3, "offset": 41}
