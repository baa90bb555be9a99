"""The ``lineguard`` command: one entry point, one subcommand per tool or service.

Each subcommand lives with its service and exposes ``register(subparsers)``; heavy imports
(torch, aiokafka) happen inside the command so that ``lineguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.settings import SettingsError

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "services.model_tools.cli",  # fit, evaluate, score
    "services.kafka_admin.cli",  # kafka up|down|status, topics ensure
    "services.camera_sim.main",  # camera-sim
    "services.scorer.main",  # scorer, announce
    "services.explainer.cli",  # explainer
    "services.demo.main",  # demo
    "services.alerts.main",  # alerts
    "services.plc_bridge.main",  # plc-sim, plc-bridge
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard", description="Kafka-native visual inspection.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except SettingsError as exc:
        print(f"lineguard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
