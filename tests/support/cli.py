"""The ``lineguard`` command run in this process, for tests that read what it prints."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.cli import main


def json_of(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[Any, str]:
    """``lineguard ARGV`` (a ``--json`` command), which must succeed: its stdout read as JSON (it
    must be the JSON alone, as it pipes into jq) and its stderr (the readable report)."""
    capsys.readouterr()  # what earlier steps printed
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err
