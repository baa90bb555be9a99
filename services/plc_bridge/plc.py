"""PLC connections: Modbus TCP (pymodbus) and OPC UA (asyncua), both writing the register map.

Each target writes absolute state (never increments), so repeating a write after an error is safe.
Within a station the result sequence is written last: a PLC that waits for the sequence to change
then reads a reject output and counters that already belong to that result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from services.plc_bridge import registers as reg
from services.plc_bridge.core import LineState, StationState
from shared.errors import LineguardError


class PlcError(LineguardError, RuntimeError):
    """A PLC could not be reached or refused a read/write."""

    default_reason = "plc"


class PlcTarget(Protocol):
    name: str

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def read_station(self, index: int, station_id: str) -> StationState: ...
    async def read_part_trigger(self, index: int, station_id: str) -> int: ...
    async def write_station(self, index: int, station_id: str, state: StationState) -> None: ...
    async def write_line(self, line: LineState, station_count: int) -> None: ...


def _status_bits(line: LineState) -> int:
    return (
        (reg.STATUS_SCORER_OK if line.scorer_ok else 0)
        | (reg.STATUS_FAIL_SAFE if line.fail_safe_active else 0)
        | (reg.STATUS_STOP_LINE if line.stop_line else 0)
    )


class ModbusPlc:
    """The bridge as Modbus TCP client of the PLC (the PLC is the server).

    The pymodbus client is made on ``connect``, inside the running event loop (it takes the loop
    when it is constructed), so a target can be built before the loop runs, as the command does.
    Every request is bounded: pymodbus's own timeout, and ``_LIMIT`` times it around the call.
    """

    name = "modbus"
    _LIMIT = 3  # request timeouts one call may take in all (pymodbus retries once)

    def __init__(self, host: str, port: int, device_id: int = 1, timeout_s: float = 2.0) -> None:
        self.host, self.port, self.device_id, self.timeout_s = host, port, device_id, timeout_s
        self._client: Any = None

    async def connect(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        logging.getLogger("pymodbus").setLevel(logging.ERROR)  # it logs every reconnect attempt
        if self._client is None:
            self._client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=1)
        try:
            connected = await asyncio.wait_for(self._client.connect(), self.timeout_s * self._LIMIT)
        except (TimeoutError, OSError) as exc:
            await self.close()
            raise PlcError(f"modbus: cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        if not connected:
            await self.close()
            raise PlcError(f"modbus: cannot connect to {self.host}:{self.port}")

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _ensure(self) -> None:
        if self._client is None or not self._client.connected:
            await self.connect()

    @staticmethod
    def _check(response: Any, what: str) -> Any:
        if response is None or response.isError():
            raise PlcError(f"modbus: {what} refused: {response}")
        return response

    async def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from pymodbus.exceptions import ModbusException

        await self._ensure()
        request = getattr(self._client, method)(*args, device_id=self.device_id, **kwargs)
        try:
            response = await asyncio.wait_for(request, self.timeout_s * self._LIMIT)
        except (ModbusException, OSError, TimeoutError) as exc:
            await self.close()  # a fresh connection for the next call, not a half-answered one
            raise PlcError(f"modbus: {what} failed: {exc!r}") from exc
        return self._check(response, what)

    async def read_station(self, index: int, station_id: str) -> StationState:
        base = reg.station_base(index)
        words = await self._call("read station", "read_holding_registers", base, count=reg.STATION_STRIDE)
        w = list(words.registers)
        coil = await self._call("read reject", "read_coils", reg.COIL_REJECT_BASE + index, count=1)
        return StationState(
            reject=bool(coil.bits[0]),
            sequence=w[reg.OFF_SEQUENCE],
            last_decision=w[reg.OFF_DECISION],
            pass_count=reg.words_u32(w[reg.OFF_PASS : reg.OFF_PASS + 2]),
            reject_count=reg.words_u32(w[reg.OFF_REJECT : reg.OFF_REJECT + 2]),
            fail_safe_count=reg.words_u32(w[reg.OFF_FAIL_SAFE : reg.OFF_FAIL_SAFE + 2]),
            last_frame_id=reg.decode_frame_id(
                w[reg.OFF_FRAME_LEN : reg.OFF_FRAME_ID + reg.FRAME_ID_REGISTERS]
            ),
        )

    async def read_part_trigger(self, index: int, station_id: str) -> int:
        address = reg.station_base(index) + reg.OFF_PART_TRIGGER
        response = await self._call("read part trigger", "read_holding_registers", address, count=1)
        return int(response.registers[0])

    async def write_station(self, index: int, station_id: str, state: StationState) -> None:
        base = reg.station_base(index)
        values = [
            state.last_decision,
            *reg.u32_words(state.pass_count),
            *reg.u32_words(state.reject_count),
            *reg.u32_words(state.fail_safe_count),
        ]
        await self._call("write counters", "write_registers", base + reg.OFF_DECISION, values)
        frame = reg.encode_frame_id(state.last_frame_id)
        await self._call("write frame id", "write_registers", base + reg.OFF_FRAME_LEN, frame)
        await self._call("write reject", "write_coil", reg.COIL_REJECT_BASE + index, state.reject)
        await self._call("write sequence", "write_registers", base + reg.OFF_SEQUENCE, [state.sequence])

    async def write_line(self, line: LineState, station_count: int) -> None:
        await self._call("write line", "write_coils", reg.COIL_STOP_LINE, [line.stop_line, line.scorer_ok])
        words = [line.heartbeat & 0xFFFF, _status_bits(line), station_count]
        await self._call("write heartbeat", "write_registers", reg.HR_HEARTBEAT, words)


class OpcUaPlc:
    """The bridge as OPC UA client of the PLC's server, writing string node ids in one namespace."""

    name = "opcua"
    _LIMIT = 3  # request timeouts one call may take in all

    def __init__(self, url: str, namespace: str, timeout_s: float = 2.0) -> None:
        self.url, self.namespace, self.timeout_s = url, namespace, timeout_s
        self._client: Any = None
        self._ns = 0

    async def connect(self) -> None:
        from asyncua import Client

        logging.getLogger("asyncua").setLevel(logging.WARNING)
        client = Client(self.url, timeout=self.timeout_s)
        try:
            await asyncio.wait_for(client.connect(), self.timeout_s * self._LIMIT)
            self._ns = await asyncio.wait_for(client.get_namespace_index(self.namespace), self.timeout_s)
        except Exception as exc:  # asyncua raises many types; all mean "PLC not usable"
            await self._disconnect(client)
            raise PlcError(f"opcua: cannot connect to {self.url}: {exc}") from exc
        self._client = client

    @staticmethod
    async def _disconnect(client: Any) -> None:
        with contextlib.suppress(Exception):  # already gone: nothing more to close
            await client.disconnect()

    async def close(self) -> None:
        if self._client is not None:
            await self._disconnect(self._client)
            self._client = None

    def _node(self, name: str) -> Any:
        return self._client.get_node(f"ns={self._ns};s={name}")

    async def _run(self, what: str, coro_factory: Any) -> Any:
        if self._client is None:
            await self.connect()
        try:
            return await asyncio.wait_for(coro_factory(), self.timeout_s * self._LIMIT)
        except Exception as exc:  # asyncua raises many types (and TimeoutError): reconnect next call
            await self.close()
            raise PlcError(f"opcua: {what} failed: {exc}") from exc

    async def _write(self, what: str, items: list[tuple[str, Any, str]]) -> None:
        from asyncua import ua

        async def write() -> None:
            nodes = [self._node(name) for name, _, _ in items]
            values = [
                ua.DataValue(ua.Variant(value, getattr(ua.VariantType, vtype))) for _, value, vtype in items
            ]
            await self._client.write_values(nodes, values)

        await self._run(what, write)

    async def _read(self, what: str, names: list[str]) -> list[Any]:
        async def read() -> list[Any]:
            result: list[Any] = await self._client.read_values([self._node(n) for n in names])
            return result

        values: list[Any] = await self._run(what, read)
        return values

    async def read_station(self, index: int, station_id: str) -> StationState:
        names = ["reject", *reg.OPCUA_STATION_UINTS, "last_frame_id"]
        values = await self._read("read station", [reg.OpcUaNames.station(station_id, n) for n in names])
        got = dict(zip(names, values, strict=True))
        return StationState(
            reject=bool(got["reject"]),
            sequence=int(got["sequence"]) & 0xFFFF,
            last_decision=int(got["last_decision"]),
            pass_count=int(got["pass_count"]),
            reject_count=int(got["reject_count"]),
            fail_safe_count=int(got["fail_safe_count"]),
            last_frame_id=str(got["last_frame_id"] or ""),
        )

    async def read_part_trigger(self, index: int, station_id: str) -> int:
        (value,) = await self._read("read part trigger", [reg.OpcUaNames.station(station_id, "part_trigger")])
        return int(value) & 0xFFFF

    async def write_station(self, index: int, station_id: str, state: StationState) -> None:
        name = reg.OpcUaNames.station
        await self._write(
            "write station",
            [
                (name(station_id, "last_decision"), state.last_decision, "UInt32"),
                (name(station_id, "pass_count"), state.pass_count & 0xFFFFFFFF, "UInt32"),
                (name(station_id, "reject_count"), state.reject_count & 0xFFFFFFFF, "UInt32"),
                (name(station_id, "fail_safe_count"), state.fail_safe_count & 0xFFFFFFFF, "UInt32"),
                (name(station_id, "last_frame_id"), state.last_frame_id, "String"),
                (name(station_id, "reject"), state.reject, "Boolean"),
            ],
        )
        await self._write("write sequence", [(name(station_id, "sequence"), state.sequence, "UInt32")])

    async def write_line(self, line: LineState, station_count: int) -> None:
        name = reg.OpcUaNames.line
        await self._write(
            "write line",
            [
                (name("scorer_ok"), line.scorer_ok, "Boolean"),
                (name("fail_safe_active"), line.fail_safe_active, "Boolean"),
                (name("stop_line"), line.stop_line, "Boolean"),
                (name("heartbeat"), line.heartbeat, "UInt32"),
            ],
        )
