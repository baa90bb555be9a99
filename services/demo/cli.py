"""``lineguard demo``: the whole line on this machine for a couple of minutes, then a summary."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from services.camera_sim.cli import add_stream_arguments
from shared.errors import LineguardError


def _command(args: argparse.Namespace) -> int:
    from services.demo.core import DemoError, say
    from services.demo.service import run_demo

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through run_demo's cleanup

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run_demo(args)
    except KeyboardInterrupt:
        say("interrupted; everything the demo started has been stopped")
        return 130
    except LineguardError:
        raise
    except (RuntimeError, ValueError, OSError) as exc:  # a component it runs failed: one line, no traceback
        raise DemoError(f"demo failed: {exc}") from exc


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole line locally (Kafka, model, camera simulator, scorer) and print a summary",
    )
    parser.add_argument("--workdir", default="var/demo", help="dataset, model, ground truth and logs")
    parser.add_argument("--products", default="washer,fabric", help="synthetic products (two or more)")
    parser.add_argument("--size", type=int, default=160, help="image and model input size in pixels")
    parser.add_argument("--train", type=int, default=40, help="training images per product")
    parser.add_argument("--bank", type=int, default=1000, help="memory bank size per product")
    parser.add_argument("--frames", type=int, default=200, help="frames to send in all")
    add_stream_arguments(parser, rate=6.0, cameras=2, bad_rate=0.05)
    parser.add_argument("--max-seconds", type=float, default=110.0, help="overall time budget")
    parser.set_defaults(handler=_command)
