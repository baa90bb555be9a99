"""The PLC register map: where the bridge writes each value, for Modbus TCP and OPC UA.

One place for the addresses, used by the bridge, the simulated PLCs and docs/operations.md.

Modbus (one device id; zero-based addresses as on the wire):

    Coils                 0  stop-line request       (bridge writes; 1 = stop the line)
                          1  scorer healthy          (bridge writes)
                     16 + n  reject output, station n (bridge writes; 1 = divert the part)
    Holding registers     0  bridge heartbeat        (uint16, +1 every heartbeat interval, wraps)
                          1  line status bits        (bit0 scorer healthy, bit1 fail-safe active,
                                                      bit2 stop-line requested)
                          2  number of stations
    Station n, base = 100 + 32 * n:
                     base+0  result sequence         (uint16, +1 per result, written LAST)
                     base+1  last decision code      (see DECISION_CODES)
                   base+2..3 pass count              (uint32, high word first)
                   base+4..5 reject count            (uint32)
                   base+6..7 fail-safe count         (uint32)
                     base+8  part trigger counter    (uint16, written by the PLC, read by the bridge)
                     base+9  last frame id length    (bytes)
                base+10..29  last frame id           (UTF-8, 2 bytes per register, big-endian,
                                                      zero padded, at most 40 bytes)

OPC UA: namespace ``urn:lineguard:plc`` (configurable), string node ids:

    lineguard/heartbeat (UInt32), lineguard/scorer_ok, lineguard/fail_safe_active,
    lineguard/stop_line (Boolean), and per station id S: lineguard/S/reject (Boolean),
    lineguard/S/sequence, lineguard/S/last_decision, lineguard/S/pass_count,
    lineguard/S/reject_count, lineguard/S/fail_safe_count, lineguard/S/part_trigger (UInt32),
    lineguard/S/last_frame_id (String).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.engine.config import Decision

# Codes of the "last decision" register: the verdict decisions, plus nothing yet and the bridge's
# own fail-safe reject (asserted without a verdict).
NO_DECISION = "none"
FAIL_SAFE = "fail_safe"
DECISION_CODES: dict[str, int] = {
    NO_DECISION: 0,
    Decision.PASS: 1,
    Decision.REJECT: 2,
    Decision.REVIEW: 3,
    Decision.ERROR: 4,
    FAIL_SAFE: 5,
}

COIL_STOP_LINE = 0
COIL_SCORER_OK = 1
COIL_REJECT_BASE = 16
HR_HEARTBEAT = 0
HR_STATUS = 1
HR_STATION_COUNT = 2
STATION_BASE = 100
STATION_STRIDE = 32
OFF_SEQUENCE = 0
OFF_DECISION = 1
OFF_PASS = 2
OFF_REJECT = 4
OFF_FAIL_SAFE = 6
OFF_PART_TRIGGER = 8
OFF_FRAME_LEN = 9
OFF_FRAME_ID = 10
FRAME_ID_REGISTERS = 20
FRAME_ID_MAX_BYTES = FRAME_ID_REGISTERS * 2
MAX_STATIONS = 64  # keeps the last station block under 2200, well inside one PLC data area
HOLDING_REGISTERS = STATION_BASE + STATION_STRIDE * MAX_STATIONS
COILS = COIL_REJECT_BASE + MAX_STATIONS

STATUS_SCORER_OK = 1
STATUS_FAIL_SAFE = 2
STATUS_STOP_LINE = 4


def station_base(index: int) -> int:
    if not 0 <= index < MAX_STATIONS:
        raise ValueError(f"station index {index} outside 0..{MAX_STATIONS - 1}")
    return STATION_BASE + STATION_STRIDE * index


def u32_words(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def words_u32(words: list[int]) -> int:
    return (words[0] << 16) | words[1]


def encode_frame_id(frame_id: str) -> list[int]:
    """Length register then 20 registers of UTF-8 bytes (truncated at 40 bytes)."""
    raw = frame_id.encode("utf-8")[:FRAME_ID_MAX_BYTES]
    padded = raw.ljust(FRAME_ID_MAX_BYTES, b"\0")
    return [len(raw)] + [(padded[i] << 8) | padded[i + 1] for i in range(0, FRAME_ID_MAX_BYTES, 2)]


def decode_frame_id(words: list[int]) -> str:
    length = min(words[0], FRAME_ID_MAX_BYTES)
    raw = b"".join(bytes([w >> 8, w & 0xFF]) for w in words[1 : 1 + FRAME_ID_REGISTERS])
    return raw[:length].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class OpcUaNames:
    """String node ids of the OPC UA address space."""

    @staticmethod
    def line(name: str) -> str:
        return f"lineguard/{name}"

    @staticmethod
    def station(station_id: str, name: str) -> str:
        return f"lineguard/{station_id}/{name}"


OPCUA_LINE_BOOLS = ("scorer_ok", "fail_safe_active", "stop_line")
OPCUA_STATION_UINTS = (
    "sequence",
    "last_decision",
    "pass_count",
    "reject_count",
    "fail_safe_count",
    "part_trigger",
)
