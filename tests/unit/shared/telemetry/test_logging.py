import json
import logging

import pytest

from shared.telemetry.logging import log_event, setup_logging


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
