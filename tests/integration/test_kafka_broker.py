"""The local broker's lifecycle via `lineguard kafka up|status|down`: ready, idempotent, leaves nothing."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import pytest

from services.kafka_admin import cli
from shared.errors import BrokerError
from shared.kafka.broker import LocalBroker, api_versions_ok, free_port, free_ports
from shared.settings import BrokerSettings

pytestmark = pytest.mark.integration

LIBS_DIR = Path(os.environ.get("LINEGUARD_BROKER__LIBS_DIR", BrokerSettings().libs_dir))


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lineguard")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


def test_up_status_down_leaves_no_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port, controller_port = free_ports(2)
    options = ["--port", str(port), "--controller-port", str(controller_port)]
    options += ["--data-dir", str(tmp_path), "--libs-dir", str(LIBS_DIR)]
    assert run("kafka", "status", *options) == 1
    try:
        assert run("kafka", "up", *options) == 0
        pid = int((tmp_path / "broker.pid").read_text())
        assert api_versions_ok("localhost", port)
        assert run("kafka", "status", *options) == 0
        assert run("kafka", "up", *options) == 0  # already up: same process
        assert int((tmp_path / "broker.pid").read_text()) == pid
        assert "localhost" in (tmp_path / "server.properties").read_text()
        assert (tmp_path / "kraft" / "meta.properties").exists()
    finally:
        assert run("kafka", "down", *options) == 0
    assert not Path(f"/proc/{pid}").exists()
    assert not (tmp_path / "broker.pid").exists()
    assert not api_versions_ok("localhost", port)
    assert run("kafka", "status", *options) == 1
    assert run("kafka", "down", *options) == 0  # nothing to stop is not an error
    out = capsys.readouterr().out
    assert "ready at localhost:" in out and "kafka stopped" in out and "not running" in out


def test_start_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        settings = BrokerSettings(
            port=busy.getsockname()[1], controller_port=free_port(), data_dir=tmp_path, libs_dir=LIBS_DIR
        )
        with pytest.raises(BrokerError, match="already in use"):
            LocalBroker(settings).start()
    assert not (tmp_path / "broker.pid").exists()


def test_start_without_jars_says_how_to_get_them(tmp_path: Path) -> None:
    settings = BrokerSettings(
        port=free_port(), controller_port=free_port(), data_dir=tmp_path, libs_dir=tmp_path
    )
    with pytest.raises(BrokerError, match="make kafka-jars"):
        LocalBroker(settings).start()


def test_api_versions_probe_is_false_for_non_kafka(tmp_path: Path) -> None:
    assert not api_versions_ok("localhost", free_port())
    with socket.socket() as listener:  # accepts, never answers like Kafka
        listener.bind(("localhost", 0))
        listener.listen()
        assert not api_versions_ok("localhost", listener.getsockname()[1], timeout_s=0.3)
