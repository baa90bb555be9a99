"""`lineguard camera-gateway` ends with one clear line and exit 2 for what is wrong with its cameras."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.cli import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LINEGUARD_")]:
        monkeypatch.delenv(name)


def test_check_prints_the_validated_cameras(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert (
        main(
            [
                "camera-gateway",
                "--folder",
                str(tmp_path),
                "--camera-id",
                "c1",
                "--station-id",
                "s1",
                "--check",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["cameras"][0]["folder"]["path"] == str(tmp_path)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--folder", "/no/such/folder", "--camera-id", "c1", "--station-id", "s1"], "does not exist"),
        (["--url", "rtsp://h/s", "--camera-id", "bad id", "--station-id", "s1"], "camera_id"),
        (["--config", "/no/such/cameras.yaml"], "cannot read"),
        (["--url", "/no/such/clip.mp4", "--camera-id", "c1", "--station-id", "s1"], "video file"),
        ([], "no camera"),
    ],
)
def test_camera_mistakes_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert main(["camera-gateway", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_bad_gateway_setting_names_its_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LINEGUARD_CAMERA_GATEWAY__OVERFLOW", "discard")
    assert main(["camera-gateway", "--folder", str(tmp_path), "--camera-id", "c1", "--station-id", "s1"]) == 2
    assert "LINEGUARD_CAMERA_GATEWAY__OVERFLOW" in capsys.readouterr().err
