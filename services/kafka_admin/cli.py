"""``lineguard kafka up|down|status`` (the local broker) and ``lineguard topics ensure``.

Thin shell over ``shared.kafka.broker.LocalBroker`` and ``shared.kafka.client.ensure_topics``.
Options override the ``LINEGUARD_BROKER__*`` settings for one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from services.arguments import positive_int
from shared.errors import BrokerError, LineguardError
from shared.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    kafka = subparsers.add_parser("kafka", help="start, stop or inspect the local Kafka broker")
    actions = kafka.add_subparsers(dest="kafka_action", required=True, metavar="ACTION")
    for name, handler, text in (
        ("up", _kafka_up, "format (first time) and start the broker; wait until it is ready"),
        ("down", _kafka_down, "stop the broker (SIGTERM, then SIGKILL after a timeout)"),
        ("status", _kafka_status, "say whether the broker runs and answers; exit 1 if not"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        _add_broker_options(action)
        action.set_defaults(handler=handler)

    topics = subparsers.add_parser("topics", help="manage Lineguard's Kafka topics")
    topic_actions = topics.add_subparsers(dest="topics_action", required=True, metavar="ACTION")
    ensure = topic_actions.add_parser(
        "ensure", help="create missing topics (idempotent)", description="Create missing topics."
    )
    ensure.add_argument(
        "--frames-partitions",
        type=positive_int,
        default=4,
        help="partitions of the frames topic = the most scorers that can share the load (default 4)",
    )
    ensure.add_argument("--bootstrap", help="bootstrap servers (default: LINEGUARD_KAFKA_BOOTSTRAP or local)")
    ensure.set_defaults(handler=_topics_ensure)


def _add_broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="client port (default LINEGUARD_BROKER__PORT or 9092)")
    parser.add_argument("--controller-port", type=int, help="KRaft controller port (default 9093)")
    parser.add_argument("--data-dir", type=Path, help="data directory (default var/kafka)")
    parser.add_argument("--libs-dir", type=Path, help="Kafka jars (default .cache/kafka/libs)")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    updates = {
        key: value
        for key, value in (
            ("port", getattr(args, "port", None)),
            ("controller_port", getattr(args, "controller_port", None)),
            ("data_dir", getattr(args, "data_dir", None)),
            ("libs_dir", getattr(args, "libs_dir", None)),
        )
        if value is not None
    }
    broker = settings.broker.model_validate({**settings.broker.model_dump(), **updates})
    changes: dict[str, Any] = {"broker": broker}
    if getattr(args, "bootstrap", None):
        changes["kafka_bootstrap"] = args.bootstrap
    return settings.model_copy(update=changes)


def _broker(args: argparse.Namespace) -> Any:
    from shared.kafka.broker import LocalBroker

    return LocalBroker(_settings(args).broker)


def _kafka_up(args: argparse.Namespace) -> int:
    status = _broker(args).start()  # a BrokerError says what to do; the lineguard command prints it
    print(
        f"kafka ready at {status.bootstrap} (pid {status.pid}, data {status.data_dir}, log {status.log_file})"
    )
    return 0


def _kafka_down(args: argparse.Namespace) -> int:
    broker = _broker(args)
    stopped = broker.stop()
    print("kafka stopped" if stopped else f"kafka was not running (data {broker.data_dir})")
    return 0


def _kafka_status(args: argparse.Namespace) -> int:
    status = _broker(args).status()
    if status.ready:
        print(f"kafka running and ready at {status.bootstrap} (pid {status.pid})")
        return 0
    if status.running:
        print(
            f"kafka running (pid {status.pid}) but not answering at {status.bootstrap}; see {status.log_file}"
        )
        return 1
    print(f"kafka not running (data {status.data_dir})")
    return 1


def _topics_ensure(args: argparse.Namespace) -> int:
    from shared.kafka.client import ensure_topics

    settings = _settings(args)
    try:
        names = asyncio.run(ensure_topics(settings, frames_partitions=args.frames_partitions))
    except LineguardError:
        raise
    except Exception as exc:  # the Kafka client's many errors: one line, not a traceback
        raise BrokerError(
            f"topics ensure: {type(exc).__name__}: {exc} (bootstrap {settings.bootstrap})"
        ) from exc
    print("topics ready: " + ", ".join(names))
    return 0
