"""The ``lineguard`` command: one entry point, one subcommand per tool or service.

Each service's commands live in its ``cli.py`` and are added by ``register(subparsers)``; heavy
imports (torch, aiokafka) happen inside the command so that ``lineguard --help`` stays fast.

Every deliberate error derives from ``shared.errors.LineguardError``; this is the one place that
turns one into a line on stderr and an exit code: 2 for configuration and usage (``ConfigError``),
1 for anything else.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, LineguardError

# Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "services.model_tools.cli",  # fit, evaluate, score
    "services.kafka_admin.cli",  # kafka up|down|status, topics ensure
    "services.camera_sim.cli",  # camera-sim
    "services.camera_gateway.cli",  # camera-gateway
    "services.scorer.cli",  # scorer, announce, model keygen
    "services.explainer.cli",  # explainer
    "services.demo.cli",  # demo
    "services.alerts.cli",  # alerts
    "services.plc_bridge.cli",  # plc-sim, plc-bridge
    "services.console.cli",  # console
    "services.labels.cli",  # labels export
    "services.shadow.cli",  # shadow, promote, rollback, loop check
    "services.claim_check.cli",  # claim-check gc
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def version() -> str:
    """The installed package's version; from pyproject.toml when run from a checkout not installed."""
    try:
        return metadata.version("lineguard")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


class _DefaultsShown(argparse.HelpFormatter):
    """Help that names each option's default, unless its text already does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, [], {})
        if shown and action.option_strings and "default" not in text and "%(default)" not in text:
            return f"{text} (default: %(default)s)"
        return action.help


class _Parser(argparse.ArgumentParser):
    """Every ``lineguard`` command's parser (sub-commands inherit it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lineguard", description="Kafka-native visual inspection.")
    parser.add_argument("--version", action="version", version=f"lineguard {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except LineguardError as exc:
        print(f"lineguard: {str(exc) or exc.reason}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
