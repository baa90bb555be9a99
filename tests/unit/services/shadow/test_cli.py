"""The commands' arguments: times, windows, the trained frames, and refusals before any Kafka or model."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.cli import main
from services.shadow.cli import _trained_stems, parse_time
from services.shadow.core import Candidate
from services.shadow.service import ShadowRun, Window
from shared.errors import ConfigError
from shared.frames_store import frame_file_stem
from shared.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LINEGUARD_")]:
        monkeypatch.delenv(name)


def test_times_are_iso_8601_and_local_without_a_zone() -> None:
    assert parse_time("2025-06-01T12:00:00Z") == int(datetime(2025, 6, 1, 12, tzinfo=UTC).timestamp() * 1e9)
    assert parse_time("2025-06-01T14:00:00+02:00") == parse_time("2025-06-01T12:00:00Z")
    local = datetime(2025, 6, 1, 12).astimezone()
    assert parse_time("2025-06-01T12:00:00") == int(local.timestamp() * 1e9)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("yesterday")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"live": True, "from_offset": 0},
        {"from_offset": -1},
        {"from_offset": 0, "duration_s": 5.0},
        {"live": True, "max_frames": 0},
    ],
)
def test_a_window_needs_one_start_and_sane_limits(fields: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Window(**fields)  # type: ignore[arg-type]


def test_window_describes_itself() -> None:
    assert Window(from_offset=3).describe() == {
        "mode": "replay",
        "start": "offset 3 of every partition",
        "until": "the end of frames when the run started",
    }
    live = Window(live=True, until_ns=parse_time("2025-06-01T12:00:00Z")).describe()
    assert live["mode"] == "live" and live["until"] == "2025-06-01T12:00:00.000Z"


def test_trained_frames_are_the_labelled_sets_images(tmp_path: Path) -> None:
    root = tmp_path / "labelled"
    for rel in (
        "washer/test/spot/f-1.png",
        "washer/train/good/f-2.png",
        "washer/ground_truth/spot/f-1_mask.png",
        f"washer/test/spot/{frame_file_stem('odd id/1')}.png",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"png")
    stems = _trained_stems([root])
    assert stems == {"f-1", "f-2", frame_file_stem("odd id/1")}
    with pytest.raises(ConfigError):
        _trained_stems([tmp_path / "missing"])


def test_shadow_refusals_come_before_any_model_or_broker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-model")
    assert main(["shadow", "--model", missing, "--from-offset", "0", "--duration", "5"]) == 2
    assert "--duration is for --live" in capsys.readouterr().err
    assert main(["shadow", "--model", missing, "--live", "--exclude-trained", missing]) == 2
    assert "not a folder" in capsys.readouterr().err
    monkeypatch.setenv("LINEGUARD_SHADOW__GROUP_ID", "lineguard-scorer")
    assert main(["shadow", "--model", missing, "--live"]) == 2
    assert "scorer's group" in capsys.readouterr().err


def test_promote_needs_a_key_or_unsigned_and_a_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    report.write_text("{}")
    assert main(["promote", "--model", str(tmp_path), "--report", str(report)]) == 2
    assert "no signing key" in capsys.readouterr().err
    report.write_text("not json")
    assert main(["promote", "--model", str(tmp_path), "--report", str(report), "--unsigned"]) == 2
    assert "is not JSON" in capsys.readouterr().err
    assert main(["rollback"]) == 2
    assert "no signing key" in capsys.readouterr().err


def test_every_line_of_a_run_carries_its_run_id(caplog: pytest.LogCaptureFixture) -> None:
    run = ShadowRun(Settings(), None, Candidate("v2", "", ""), Window(from_offset=0), run_id="r-1")
    with caplog.at_level("INFO", logger="lineguard.shadow"):
        run._log("shadow_progress", frames=3)
    (line,) = caplog.records
    assert line.getMessage() == "shadow_progress"
    assert line.fields == {"run": "r-1", "frames": 3}  # type: ignore[attr-defined]
