"""The cameras' configuration: the documented example loads, mistakes are named where they are."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.camera_gateway.cli import config_from_args
from services.camera_gateway.config import load_config, parse_config
from services.cli import build_parser
from shared.errors import ConfigError
from shared.settings import OverflowPolicy, Settings

EXAMPLE = Path(__file__).resolve().parents[4] / "deploy" / "camera-gateway.yaml"


def camera(**changes: Any) -> dict[str, Any]:
    return {"camera_id": "cam-1", "station_id": "station-1", "folder": {"path": "/hot"}, **changes}


def problems(data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cameras.yaml")
    return str(caught.value)


def test_the_documented_example_loads_with_every_kind_of_source() -> None:
    config = load_config(EXAMPLE)
    kinds = {
        c.camera_id: ("folder" if c.folder else "stream" if c.stream else "device") for c in config.cameras
    }
    assert kinds == {
        "press-3-top": "folder",
        "conveyor-2": "stream",
        "packer-1": "stream",
        "labeler-1": "stream",
    }
    press = config.cameras[0]
    assert press.folder is not None and press.folder.after == "move"
    identity = press.identity("line-9")
    assert (identity.line_id, identity.product, identity.deadline_ms) == ("line-1", "washer", 800)
    assert config.cameras[1].overflow is OverflowPolicy.DROP_OLDEST
    assert config.cameras[2].stream is not None and config.cameras[2].stream.trigger is not None
    assert config.cameras[3].identity("line-9").line_id == "line-9"


def test_the_commented_device_example_is_valid_too() -> None:
    text = EXAMPLE.read_text()
    device_block = text[text.index("  # - camera_id: gige-1") :]
    uncommented = "\n".join(line.replace("  # ", "  ", 1) for line in device_block.splitlines())
    config = parse_config(yaml.safe_load("cameras:\n" + uncommented), "example")
    assert config.cameras[0].device is not None
    assert config.cameras[0].device.factory == "plant_cameras.genicam:GenICamDevice"


def test_problems_are_named_by_where_they_are() -> None:
    text = problems(
        {"cameras": [camera(), camera(camera_id="cam-2", stream={"url": "rtsp://x", "fps": -1}, folder=None)]}
    )
    assert "cameras[1].stream.fps" in text
    assert "cameras.yaml" in text
    assert "cameras[0].folder.setle_s" in problems(
        {"cameras": [camera(folder={"path": "/hot", "setle_s": 1})]}
    )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"cameras": []}, "at least 1"),
        ({"cameras": [camera(), camera()]}, "unique: cam-1"),
        ({"cameras": [camera(), camera(camera_id="cam-2")]}, "each hot folder belongs to one camera"),
        ({"cameras": [camera(stream={"url": "rtsp://x"})]}, "exactly one source"),
        ({"cameras": [camera(folder=None)]}, "exactly one source"),
        ({"cameras": [camera(camera_id="cam 1")]}, "camera_id"),
        ({"cameras": [camera(camera_id="x" * 129)]}, "camera_id"),
        ({"cameras": [camera(product="no/slashes")]}, "product class name"),
        ({"cameras": [camera(overflow="drop_oldest")]}, "a hot folder always waits"),
        (
            {
                "cameras": [
                    camera(folder=None, stream={"url": "rtsp://x", "fps": 1, "trigger": {"file": "/t"}})
                ]
            },
            "fps or trigger",
        ),
        (
            {"cameras": [camera(folder=None, stream={"url": "rtsp://x", "trigger": {}})]},
            "exactly one of file",
        ),
        ({"cameras": [camera(folder=None, device={"factory": "not a factory"})]}, "factory"),
        ({"cameras": [camera(folder={"path": "/hot", "after": "copy"})]}, "after"),
        (["not", "a", "map"], "valid dictionary"),
    ],
)
def test_invalid_configurations_are_refused(data: Any, needle: str) -> None:
    assert needle in problems(data)


def test_a_file_that_is_not_yaml_or_not_there_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["camera-gateway", *argv])


def test_one_camera_from_the_command_line() -> None:
    settings = Settings()
    folder = config_from_args(
        args(
            "--folder",
            "/hot",
            "--camera-id",
            "c1",
            "--station-id",
            "s1",
            "--product",
            "washer",
            "--after",
            "delete",
        ),
        settings,
    )
    (cam,) = folder.cameras
    assert cam.folder is not None and cam.folder.after == "delete" and cam.product == "washer"
    stream = config_from_args(
        args(
            "--url",
            "rtsp://h/s",
            "--camera-id",
            "c1",
            "--station-id",
            "s1",
            "--line-id",
            "l2",
            "--trigger-topic",
            "plant.triggers",
        ),
        settings,
    )
    (cam,) = stream.cameras
    assert cam.stream is not None and cam.stream.trigger is not None
    assert cam.stream.trigger.topic == "plant.triggers" and cam.line_id == "l2"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ((), "no camera"),
        (("--folder", "/hot", "--camera-id", "c1"), "--station-id"),
        (("--folder", "/hot", "--station-id", "s"), "--camera-id"),
        (("--folder", "/hot", "--camera-id", "c1", "--station-id", "s", "--fps", "2"), "apply to --url"),
        (
            (
                "--url",
                "x",
                "--camera-id",
                "c1",
                "--station-id",
                "s",
                "--trigger-file",
                "/t",
                "--trigger-topic",
                "t",
            ),
            "not both",
        ),
        (("--folder", "/hot", "--camera-id", "c1", "--station-id", "s", "--config", "c.yaml"), "not both"),
    ],
)
def test_command_line_mistakes(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_args(args(*argv), Settings())


def test_the_config_file_setting_is_used_when_no_camera_is_given() -> None:
    settings = Settings(camera_gateway={"config_file": str(EXAMPLE)})  # type: ignore[arg-type]
    assert len(config_from_args(args(), settings).cameras) == 4
