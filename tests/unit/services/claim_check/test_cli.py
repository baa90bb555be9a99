"""``lineguard claim-check gc``: old hours go, recent ones stay, and it says what it removed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from services.cli import EXIT_USAGE, main
from shared.errors import ClaimCheckError
from shared.frames_store import ClaimStore


def test_gc_deletes_hours_past_retention_and_reports_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LINEGUARD_CLAIM_CHECK__URL", str(tmp_path))
    monkeypatch.setenv("LINEGUARD_CLAIM_CHECK__RETENTION_S", "7200")
    store = ClaimStore(tmp_path)
    old = store.put("old", b"o" * 3000, "jpeg", now=time.time() - 4 * 3600)
    new = store.put("new", b"n" * 3000, "jpeg")
    assert main(["claim-check", "gc", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["dry_run"], dry["objects"], dry["bytes"]) == (True, 1, 3000) and store.fetch(old)
    assert main(["claim-check", "gc"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["hours"] == dry["hours"] and len(done["hours"]) == 1
    with pytest.raises(ClaimCheckError):
        store.fetch(old)
    assert store.fetch(new)


def test_gc_without_a_store_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LINEGUARD_CLAIM_CHECK__URL", raising=False)
    assert main(["claim-check", "gc"]) == EXIT_USAGE
    assert "LINEGUARD_CLAIM_CHECK__URL" in capsys.readouterr().err
