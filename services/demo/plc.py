"""The demo's PLC: the Modbus simulator of ``lineguard plc-sim`` served from a thread of the demo
process, so the demo can read back what the bridge wrote to it over the network."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from services.plc_bridge.simulators import ModbusPlcSimulator

_TIMEOUT_S = 10.0


class PlcOnThread:
    """A real Modbus TCP server on ``port`` in its own event loop thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._simulator = ModbusPlcSimulator("127.0.0.1", port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="demo-plc", daemon=True)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_TIMEOUT_S)

    def start(self) -> None:
        self._thread.start()
        self._call(self._simulator.start())

    def station(self, index: int) -> dict[str, Any]:
        """The bridge's outputs for station ``index``: counters, last decision, last frame id."""
        return dict(self._call(self._simulator.station(index)))

    def line(self) -> dict[str, Any]:
        """The bridge's line outputs: heartbeat, status, stop-line and scorer-ok."""
        return dict(self._call(self._simulator.line()))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._simulator.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_TIMEOUT_S)
        self._loop.close()
