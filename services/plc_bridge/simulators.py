"""Simulated PLCs with the bridge's register map: a pymodbus server and an asyncua server.

For the tests and for commissioning (run the bridge against them before touching the real PLC).
Both expose the same small inspection API: read what the bridge wrote, play the PLC's part
(advance the part trigger counter).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.plc_bridge import registers as reg
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.plc_bridge")


class ModbusPlcSimulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 5020, device_id: int = 1) -> None:
        self.host, self.port, self.device_id = host, port, device_id
        self._server: Any = None

    async def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        blocks = (
            [SimData(0, count=reg.COILS, values=False, datatype=DataType.BITS)],
            [SimData(0, count=1, values=False, datatype=DataType.BITS)],
            [SimData(0, count=reg.HOLDING_REGISTERS, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
        )
        device = SimDevice(id=self.device_id, simdata=blocks)
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def holding(self, address: int, count: int = 1) -> list[int]:
        return list(await self._server.async_getValues(self.device_id, 3, address, count))

    async def coil(self, address: int) -> bool:
        return bool((await self._server.async_getValues(self.device_id, 1, address, 1))[0])

    async def reject(self, index: int) -> bool:
        return await self.coil(reg.COIL_REJECT_BASE + index)

    async def station(self, index: int) -> dict[str, Any]:
        w = await self.holding(reg.station_base(index), reg.STATION_STRIDE)
        return {
            "reject": await self.reject(index),
            "sequence": w[reg.OFF_SEQUENCE],
            "last_decision": w[reg.OFF_DECISION],
            "pass_count": reg.words_u32(w[reg.OFF_PASS : reg.OFF_PASS + 2]),
            "reject_count": reg.words_u32(w[reg.OFF_REJECT : reg.OFF_REJECT + 2]),
            "fail_safe_count": reg.words_u32(w[reg.OFF_FAIL_SAFE : reg.OFF_FAIL_SAFE + 2]),
            "last_frame_id": reg.decode_frame_id(
                w[reg.OFF_FRAME_LEN : reg.OFF_FRAME_ID + reg.FRAME_ID_REGISTERS]
            ),
        }

    async def line(self) -> dict[str, Any]:
        hb, status, count = await self.holding(reg.HR_HEARTBEAT, 3)
        return {
            "heartbeat": hb,
            "status": status,
            "stations": count,
            "stop_line": await self.coil(reg.COIL_STOP_LINE),
            "scorer_ok": await self.coil(reg.COIL_SCORER_OK),
        }

    async def trigger_part(self, index: int, parts: int = 1) -> None:
        address = reg.station_base(index) + reg.OFF_PART_TRIGGER
        (current,) = await self.holding(address)
        await self._server.async_setValues(self.device_id, 16, address, [(current + parts) & 0xFFFF])


class OpcUaPlcSimulator:
    def __init__(
        self,
        stations: list[str],
        endpoint: str = "opc.tcp://127.0.0.1:4840/lineguard/",
        namespace: str = "urn:lineguard:plc",
    ) -> None:
        self.stations, self.endpoint, self.namespace = stations, endpoint, namespace
        self._server: Any = None
        self._vars: dict[str, Any] = {}

    async def start(self) -> None:
        from asyncua import Server, ua

        logging.getLogger("asyncua").setLevel(logging.ERROR)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(self.namespace)
        root = await server.nodes.objects.add_object(
            f"ns={idx};s=lineguard", ua.QualifiedName("Lineguard", idx)
        )

        async def add(name: str, value: Any, vtype: Any) -> None:
            node = await root.add_variable(
                f"ns={idx};s={name}", ua.QualifiedName(name, idx), value, varianttype=vtype
            )
            await node.set_writable()
            self._vars[name] = node

        for flag in reg.OPCUA_LINE_BOOLS:
            await add(reg.OpcUaNames.line(flag), False, ua.VariantType.Boolean)
        await add(reg.OpcUaNames.line("heartbeat"), 0, ua.VariantType.UInt32)
        for station in self.stations:
            await add(reg.OpcUaNames.station(station, "reject"), False, ua.VariantType.Boolean)
            for name in reg.OPCUA_STATION_UINTS:
                await add(reg.OpcUaNames.station(station, name), 0, ua.VariantType.UInt32)
            await add(reg.OpcUaNames.station(station, "last_frame_id"), "", ua.VariantType.String)
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def value(self, name: str) -> Any:
        return await self._vars[name].read_value()

    async def station(self, station_id: str) -> dict[str, Any]:
        names = ["reject", *reg.OPCUA_STATION_UINTS, "last_frame_id"]
        return {n: await self.value(reg.OpcUaNames.station(station_id, n)) for n in names}

    async def line(self) -> dict[str, Any]:
        names = ["heartbeat", *reg.OPCUA_LINE_BOOLS]
        return {n: await self.value(reg.OpcUaNames.line(n)) for n in names}

    async def trigger_part(self, station_id: str, parts: int = 1) -> None:
        from asyncua import ua

        node = self._vars[reg.OpcUaNames.station(station_id, "part_trigger")]
        current = await node.read_value()
        await node.write_value(ua.DataValue(ua.Variant((current + parts) & 0xFFFF, ua.VariantType.UInt32)))


async def serve_simulators(
    host: str, modbus_port: int, opcua_port: int, stations: list[str], namespace: str, stop: asyncio.Event
) -> None:
    """``lineguard plc-sim``: both simulated PLCs until ``stop`` is set."""
    modbus = ModbusPlcSimulator(host, modbus_port)
    opcua = OpcUaPlcSimulator(stations, f"opc.tcp://{host}:{opcua_port}/lineguard/", namespace)
    await modbus.start()
    await opcua.start()
    log_event(log, "simulated plc serving", modbus_port=modbus_port, opcua_port=opcua_port, stations=stations)
    try:
        await stop.wait()
    finally:
        await modbus.stop()
        await opcua.stop()
