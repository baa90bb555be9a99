"""``lineguard plc-bridge`` (the bridge) and ``lineguard plc-sim`` (simulated PLCs for commissioning)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from shared.lifecycle import run_service

if TYPE_CHECKING:
    from shared.settings import Settings

BRIDGE_HELP = "drive the line's PLC (Modbus TCP / OPC UA) from the verdicts topic"
BRIDGE_DESCRIPTION = (
    "Reference PLC gateway: per station a reject output, counters, the last frame id and a heartbeat, "
    "on the bridge's own clock; fail-safe reject (or line stop) when Kafka is away, no scorer works or "
    "frames wait unscored, a verdict is late or undecodable, or a tracked part misses its deadline. "
    "Configured by LINEGUARD_PLC_BRIDGE__* variables (see docs/operations.md)."
)
SIM_HELP = "serve a simulated PLC (Modbus TCP and OPC UA) with the bridge's register map"
SIM_DESCRIPTION = (
    "For commissioning and the compose demo: a pymodbus server and an asyncua server holding the "
    "register map of docs/operations.md."
)


def _run_bridge(args: argparse.Namespace) -> int:
    from services.plc_bridge import metrics
    from services.plc_bridge.core import check_settings
    from services.plc_bridge.service import SERVICE, PlcBridge

    return run_service(
        SERVICE, lambda settings, stop: PlcBridge(settings).run(stop), metrics.REGISTRY, check=check_settings
    )


def _run_simulator(args: argparse.Namespace) -> int:
    from services.plc_bridge.simulators import serve_simulators

    def serve(settings: Settings, stop: asyncio.Event) -> Awaitable[None]:
        cfg = settings.plc_bridge
        stations = args.stations.split(",") if args.stations else cfg.stations
        return serve_simulators(
            args.host, args.modbus_port, args.opcua_port, stations, cfg.opcua_namespace, stop
        )

    return run_service("plc-sim", serve)


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser("plc-sim", help=SIM_HELP, description=SIM_DESCRIPTION)
    sim.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    sim.add_argument("--modbus-port", type=int, default=5020, help="Modbus TCP port (default 5020)")
    sim.add_argument("--opcua-port", type=int, default=4840, help="OPC UA port (default 4840)")
    sim.add_argument(
        "--stations", help="station ids, comma separated (default: LINEGUARD_PLC_BRIDGE__STATIONS)"
    )
    sim.set_defaults(handler=_run_simulator)

    bridge = subparsers.add_parser("plc-bridge", help=BRIDGE_HELP, description=BRIDGE_DESCRIPTION)
    bridge.set_defaults(handler=_run_bridge)
