"""PLC targets are built where the command builds them: before any event loop runs."""

from __future__ import annotations

from pathlib import Path

from services.plc_bridge.plc import ModbusPlc, OpcUaPlc
from services.plc_bridge.service import PlcBridge, _station_of, targets_from_settings
from shared.settings import PlcBridgeSettings, Settings


def test_targets_are_built_outside_a_running_event_loop(tmp_path: Path) -> None:
    # `lineguard plc-bridge` with LINEGUARD_PLC_BRIDGE__MODBUS_HOST set (the compose default) died here
    # with "RuntimeError: no running event loop": pymodbus's client wants a loop when it is constructed.
    settings = Settings(
        plc_bridge=PlcBridgeSettings(
            modbus_host="127.0.0.1",
            opcua_url="opc.tcp://127.0.0.1:4840/lineguard/",
            ledger_path=tmp_path / "ledger.jsonl",
        )
    )
    targets = targets_from_settings(settings)
    assert [type(t) for t in targets] == [ModbusPlc, OpcUaPlc]
    assert PlcBridge(settings).targets[0].name == "modbus"


def test_an_undecodable_records_key_names_a_station_only_when_it_is_a_configured_one() -> None:
    stations = {"st-a": 0, "st-b": 1}
    assert _station_of(b"st-b", stations) == "st-b"
    for key in (None, b"", b"st-c", b"\xff\xfe", b"st-a" * 100):
        assert _station_of(key, stations) is None
