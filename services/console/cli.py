"""``lineguard console``: the operators' web page over the line, and their feedback."""

from __future__ import annotations

import argparse
import os
from typing import Any

from shared.lifecycle import run_service

HELP = "the operators' web console: live verdicts, rejects with heatmaps and reports, feedback"
DESCRIPTION = (
    "Serves a web page (LINEGUARD_CONSOLE__HOST/PORT, default 127.0.0.1:8080) that follows the verdicts, "
    "defects, reports and models topics live. Signed-in operators mark frames defect (with type and "
    "regions) or good; judgements go to the compacted feedback topic for `lineguard labels export`. "
    "Needs LINEGUARD_CONSOLE__TOKEN(_FILE) or a trusted proxy header; see docs/operations.md."
)


def _run(args: argparse.Namespace) -> int:
    from services.console import metrics
    from services.console.auth import check_console_auth
    from services.console.service import SERVICE, ConsoleService

    # The command line overrides the settings the way the environment would.
    if args.host:
        os.environ["LINEGUARD_CONSOLE__HOST"] = args.host
    if args.port:
        os.environ["LINEGUARD_CONSOLE__PORT"] = str(args.port)
    return run_service(
        SERVICE,
        lambda settings, stop: ConsoleService(settings).run(stop),
        metrics.REGISTRY,
        check=lambda settings: check_console_auth(settings.console),
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("console", help=HELP, description=DESCRIPTION)
    parser.add_argument("--host", help="address to listen on (LINEGUARD_CONSOLE__HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (LINEGUARD_CONSOLE__PORT)")
    parser.set_defaults(handler=_run)
