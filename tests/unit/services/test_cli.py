"""Errors end a `lineguard` command with one clear line: exit 2 for configuration, 1 for the rest.

`lineguard alerts` and `lineguard plc-bridge` refuse incomplete configuration."""

from __future__ import annotations

import argparse
import os

import pytest

from services.cli import main
from shared.kafka.broker import free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LINEGUARD_")]:
        monkeypatch.delenv(name)


def test_alerts_without_a_webhook_starts_in_log_only_mode_but_a_bad_one_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from services.alerts.core import webhook_url
    from shared.settings import load_settings

    # Missing or empty optional secrets are the documented no-webhook mode, never an exit (issue 12).
    assert webhook_url(load_settings()) is None
    monkeypatch.setenv("LINEGUARD_ALERTS__WEBHOOK_URL", "")
    monkeypatch.setenv("LINEGUARD_ALERTS__WEBHOOK_URL_FILE", str(tmp_path / "missing"))
    assert webhook_url(load_settings()) is None
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("LINEGUARD_ALERTS__WEBHOOK_URL_FILE", str(tmp_path / "empty"))
    assert webhook_url(load_settings()) is None
    secret = "ftp://hooks.example/T000/secret-token"
    monkeypatch.setenv("LINEGUARD_ALERTS__WEBHOOK_URL", secret)
    assert main(["alerts"]) == 2
    err = capsys.readouterr().err
    assert "must be an http(s) URL" in err and secret not in err
    monkeypatch.setenv("LINEGUARD_ALERTS__WEBHOOK_FORMAT", "email")
    assert main(["alerts"]) == 2
    assert "LINEGUARD_ALERTS__WEBHOOK_FORMAT" in capsys.readouterr().err


def test_plc_bridge_needs_a_plc_and_sane_stations(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["plc-bridge"]) == 2
    assert "LINEGUARD_PLC_BRIDGE__MODBUS_HOST or LINEGUARD_PLC_BRIDGE__OPCUA_URL" in capsys.readouterr().err
    monkeypatch.setenv("LINEGUARD_PLC_BRIDGE__MODBUS_HOST", "127.0.0.1")
    monkeypatch.setenv("LINEGUARD_PLC_BRIDGE__STATIONS", '["a", "a"]')
    assert main(["plc-bridge"]) == 2
    assert "LINEGUARD_PLC_BRIDGE__STATIONS" in capsys.readouterr().err
    monkeypatch.setenv("LINEGUARD_PLC_BRIDGE__STATIONS", '["a"]')
    monkeypatch.setenv("LINEGUARD_PLC_BRIDGE__REJECT_DECISIONS", '["reject", "maybe"]')
    assert main(["plc-bridge"]) == 2
    assert "maybe" in capsys.readouterr().err
    monkeypatch.setenv("LINEGUARD_PLC_BRIDGE__FAIL_SAFE", "explode")
    assert main(["plc-bridge"]) == 2
    assert "LINEGUARD_PLC_BRIDGE__FAIL_SAFE" in capsys.readouterr().err


def test_a_failure_that_is_not_configuration_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["topics", "ensure", "--bootstrap", bootstrap]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("lineguard: topics ensure: ") and bootstrap in last


def test_a_usage_error_inside_a_command_exits_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["demo", "--products", "washer", "--workdir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "lineguard: --products: the demo needs at least two products"


def test_version_prints_the_package_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"lineguard {declared['project']['version']}"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (command path, parser) below ``parser``, itself included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_option_has_help_and_its_help_shows_its_default() -> None:
    from services.cli import build_parser

    no_help, no_default = [], []
    for path, parser in _commands(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            skipped = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
            if isinstance(action, skipped):
                continue
            where = (" ".join(path), action.option_strings or action.dest)
            if not action.help:
                no_help.append(where)
            elif (
                action.default not in (None, False, argparse.SUPPRESS, [], {})
                and action.option_strings
                and "default" not in formatter._get_help_string(action)
            ):
                no_default.append(where)
    assert no_help == [] and no_default == []
