"""``lineguard camera-sim``: publish camera frames (dataset or synthetic) to the ``frames`` topic."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.arguments import positive_int, probability
from shared.errors import ConfigError, ImageError
from shared.lifecycle import run_service
from shared.limits import MAX_DIMENSION

if TYPE_CHECKING:
    from services.camera_sim.core import SimOptions
    from shared.settings import Settings

HELP = "publish camera frames (dataset or synthetic) to the frames topic"
DESCRIPTION = (
    "Publish frames at a steady rate per camera, optionally with bad frames injected, and write the "
    "ground truth for evaluation."
)


def _options_from_args(args: argparse.Namespace) -> SimOptions:
    """The options of the same name, with the comma lists split and ``--count 0`` as "until stopped"."""
    from services.camera_sim.core import SimOptions

    names = {f.name for f in dataclasses.fields(SimOptions)}
    values = {name: value for name, value in vars(args).items() if name in names}
    values.update(
        products=_comma_list(args.products), bad_kinds=_comma_list(args.bad_kinds), count=args.count or None
    )
    return SimOptions(**values)


def _frame_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        raise argparse.ArgumentTypeError("frame size is WIDTHxHEIGHT, e.g. 2448x2048") from None
    if min(size) < 32 or max(size) > MAX_DIMENSION:
        raise argparse.ArgumentTypeError(f"frame sides must be 32-{MAX_DIMENSION} pixels")
    return size


def _comma_list(text: str | None) -> list[str]:
    return [part for part in (text or "").split(",") if part]


def _command(args: argparse.Namespace) -> int:
    from services.camera_sim.service import run_camera_sim

    options = _options_from_args(args)

    async def serve(settings: Settings, stop: asyncio.Event) -> None:
        stats = await run_camera_sim(settings, options, stop)
        print(f"camera-sim: sent {stats.sent} frames ({stats.bad} bad on purpose)", file=sys.stderr)

    try:
        return run_service("camera-sim", serve, tracing=True)
    except (FileNotFoundError, ImageError) as exc:  # what --data or --truth names cannot be used
        raise ConfigError(str(exc)) from exc


def add_stream_arguments(
    parser: argparse.ArgumentParser, *, rate: float = 5.0, cameras: int = 1, bad_rate: float = 0.0
) -> None:
    """How the simulated cameras stream; ``lineguard demo`` declares these too (its own defaults) and
    passes them on to the camera-sim it starts, so both check them the same way."""
    parser.add_argument("--rate", type=float, default=rate, help="frames per second per camera")
    parser.add_argument("--cameras", type=positive_int, default=cameras, help="number of cameras")
    parser.add_argument("--bad-rate", type=probability, default=bad_rate, help="share of bad frames")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("camera-sim", help=HELP, description=DESCRIPTION)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="MVTec-layout folder (one class, or a folder of classes)")
    source.add_argument("--synthetic", action="store_true", help="render synthetic products (default)")
    parser.add_argument("--products", help="synthetic products, comma separated (default: all)")
    parser.add_argument("--defect-rate", type=probability, default=0.3, help="synthetic defect share")
    parser.add_argument("--pool", type=positive_int, default=48, help="synthetic samples to cycle through")
    parser.add_argument("--size", type=positive_int, default=224, help="synthetic image side in pixels")
    add_stream_arguments(parser)
    parser.add_argument("--count", type=int, default=100, help="frames in all (0: until stopped)")
    parser.add_argument("--bad-kinds", help="bad frame kinds, comma separated (default: all)")
    parser.add_argument("--truth", type=Path, help="write the ground truth here (JSON lines)")
    parser.add_argument("--deadline-ms", type=int, help="verdict deadline after capture, in ms")
    parser.add_argument("--hint", action="store_true", help="send the product class as a hint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame plan and bad frames")
    parser.add_argument("--run-id", help="prefix of frame ids (default: random)")
    parser.add_argument(
        "--frame-size",
        type=_frame_size,
        help="synthetic: scale renders up to WIDTHxHEIGHT with sensor noise, like a camera frame",
    )
    parser.add_argument(
        "--encoding", choices=("jpeg", "png", "raw8"), default="jpeg", help="synthetic frames' encoding"
    )
    parser.add_argument("--jpeg-quality", type=positive_int, default=92, help="with --encoding jpeg")
    parser.set_defaults(handler=_command)
