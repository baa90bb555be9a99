"""``lineguard camera-gateway``: real cameras (hot folders, RTSP/HTTP streams, video files, capture
devices) to the ``frames`` topic, exactly one frame per hot-folder file.

One camera from the command line (``--folder DIR`` or ``--url URL`` with ``--camera-id`` and
``--station-id``), many from a YAML file (``--config FILE``, example: deploy/camera-gateway.yaml).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.arguments import non_negative_int, positive_float
from shared.errors import ConfigError

if TYPE_CHECKING:
    from services.camera_gateway.config import GatewayConfig
    from shared.settings import Settings

HELP = "send frames from hot folders, streams and cameras to the frames topic"
DESCRIPTION = (
    "Watch hot folders (every new image file becomes one frame, exactly once, then is moved or deleted), "
    "read RTSP/HTTP streams and video files through FFmpeg (sampled at --fps or one frame per trigger), "
    "and publish the frames to Kafka in transactions. Buffers are bounded per camera; see "
    "LINEGUARD_CAMERA_GATEWAY__* for the buffer, overflow policy and limits."
)


def config_from_args(args: argparse.Namespace, settings: Settings) -> GatewayConfig:
    """The cameras: from ``--config`` (or LINEGUARD_CAMERA_GATEWAY__CONFIG_FILE), else the one camera
    the options describe."""
    from services.camera_gateway.config import load_config, parse_config

    single = args.folder is not None or args.url is not None
    config_file = args.config or (None if single else settings.camera_gateway.config_file)
    if config_file is not None:
        if single:
            raise ConfigError("give --config or one camera (--folder/--url), not both")
        return load_config(Path(config_file))
    if not single:
        raise ConfigError(
            "no camera: give --folder DIR or --url URL (with --camera-id and --station-id), or --config FILE"
        )
    missing = [
        flag
        for flag, value in (("--camera-id", args.camera_id), ("--station-id", args.station_id))
        if not value
    ]
    if missing:
        raise ConfigError(f"one camera needs {' and '.join(missing)}")
    camera: dict[str, Any] = {"camera_id": args.camera_id, "station_id": args.station_id}
    for key in ("line_id", "product", "deadline_ms"):
        if getattr(args, key) is not None:
            camera[key] = getattr(args, key)
    trigger = _trigger(args)
    if args.folder is not None:
        if args.fps is not None or trigger is not None:
            raise ConfigError("--fps and triggers apply to --url; every file in a hot folder is a frame")
        folder: dict[str, Any] = {"path": str(args.folder), "after": args.after}
        if args.done_dir is not None:
            folder["done_dir"] = str(args.done_dir)
        camera["folder"] = folder
    else:
        stream: dict[str, Any] = {"url": args.url}
        if args.fps is not None:
            stream["fps"] = args.fps
        if trigger is not None:
            stream["trigger"] = trigger
        if args.encoding is not None:
            stream["encoding"] = args.encoding
        camera["stream"] = stream
    return parse_config({"cameras": [camera]}, "command line")


def _trigger(args: argparse.Namespace) -> dict[str, str] | None:
    if args.trigger_file is not None and args.trigger_topic is not None:
        raise ConfigError("give --trigger-file or --trigger-topic, not both")
    if args.trigger_file is not None:
        return {"file": str(args.trigger_file)}
    if args.trigger_topic is not None:
        return {"topic": args.trigger_topic}
    return None


def _command(args: argparse.Namespace) -> int:
    from services.camera_gateway import metrics
    from shared.lifecycle import run_service
    from shared.settings import load_settings

    if args.check:
        config = config_from_args(args, load_settings())
        print(json.dumps(config.model_dump(mode="json", exclude_none=True), indent=2))
        return 0

    holder: list[GatewayConfig] = []

    def check(settings: Settings) -> None:
        holder.append(config_from_args(args, settings))

    async def serve(settings: Settings, stop: asyncio.Event) -> None:
        from services.camera_gateway.service import run_camera_gateway

        stats = await run_camera_gateway(settings, holder[0], stop)
        print(f"camera-gateway: sent {stats.sent} frames", file=sys.stderr)

    return run_service("camera-gateway", serve, metrics.REGISTRY, tracing=True, check=check)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "camera-gateway",
        help=HELP,
        description=DESCRIPTION,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--folder", type=Path, help="hot folder of one camera: each new image file is a frame"
    )
    source.add_argument("--url", help="stream of one camera (rtsp://, http://) or a video file")
    parser.add_argument(
        "--config", type=Path, help="YAML file of cameras (default: LINEGUARD_CAMERA_GATEWAY__CONFIG_FILE)"
    )
    parser.add_argument("--camera-id", help="the camera's id (the frames' Kafka key)")
    parser.add_argument("--station-id", help="the station whose verdicts the camera's frames get")
    parser.add_argument("--line-id", help="the line (default: LINEGUARD_CAMERA_GATEWAY__LINE_ID)")
    parser.add_argument("--product", help="product class hint sent with every frame")
    parser.add_argument("--deadline-ms", type=non_negative_int, help="verdict deadline after capture, in ms")
    parser.add_argument(
        "--after",
        choices=("move", "delete"),
        default="move",
        help="--folder: what to do with a sent file (default: move)",
    )
    parser.add_argument(
        "--done-dir", type=Path, help="--folder --after move: where sent files go (default: DIR/done)"
    )
    parser.add_argument("--fps", type=positive_float, help="--url: frames taken per second (default 1)")
    parser.add_argument("--trigger-file", type=Path, help="--url: take one frame each time this file appears")
    parser.add_argument("--trigger-topic", help="--url: take one frame per record keyed by the camera id")
    parser.add_argument(
        "--encoding", choices=("jpeg", "png", "raw-rgb", "raw8"), help="--url: frame encoding (default jpeg)"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the cameras, print them as JSON and exit"
    )
    parser.set_defaults(handler=_command)
