"""The applied-verdicts ledger on disk: durable before the PLC write, bounded, read back strictly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.plc_bridge.core import LineState, StationState
from services.plc_bridge.ledger import HEADER, AppliedLedger, LedgerError
from services.plc_bridge.service import PlcBridge
from shared.messages.codec import encode
from shared.settings import PlcBridgeSettings, Settings
from tests.support import messages as build


def entries(path: Path) -> list[object]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_noted_verdicts_are_on_disk_after_sync_and_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.jsonl"
    ledger = AppliedLedger(path, ["s1", "s2"], per_station=16)
    ledger.note("s1", "a")
    ledger.note("s2", "x")
    ledger.note("s1", "b")
    assert ledger.pending and entries(path) == [HEADER]  # noted, not yet written
    asyncio.run(ledger.sync())
    assert not ledger.pending
    assert entries(path) == [HEADER, {"s": "s1", "f": "a"}, {"s": "s2", "f": "x"}, {"s": "s1", "f": "b"}]
    ledger.close()
    again = AppliedLedger(path, ["s1", "s2"], per_station=16)
    assert again.frame_ids("s1") == ["a", "b"] and again.frame_ids("s2") == ["x"]
    again.close()


def test_each_station_keeps_its_last_entries_and_the_file_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = AppliedLedger(path, ["s1", "s2"], per_station=16)
    evicted = 0

    async def run() -> None:
        nonlocal evicted
        for i in range(5000):
            ledger.note("s1", f"f{i}")
            if i % 7 == 0:
                await ledger.sync()
                evicted += ledger.take_evicted()
        ledger.note("s2", "only")
        await ledger.sync()
        evicted += ledger.take_evicted()

    asyncio.run(run())
    assert ledger.frame_ids("s1") == [f"f{i}" for i in range(5000 - 16, 5000)]
    assert evicted == 5000 - 16
    lines = path.read_text().splitlines()
    assert len(lines) <= 1 + 2 * 1024 + 7  # rewritten whenever it held twice the live entries (or 1024)
    ledger.close()
    again = AppliedLedger(path, ["s1", "s2"], per_station=16)
    assert again.frame_ids("s1") == ledger.frame_ids("s1") and again.frame_ids("s2") == ["only"]
    assert len(path.read_text().splitlines()) == 1 + 17  # the start-up rewrite keeps the live ones only
    again.close()


def test_a_last_line_cut_short_by_a_crash_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps(HEADER) + '\n{"s":"s1","f":"a"}\n{"s":"s1","f":"b')
    ledger = AppliedLedger(path, ["s1"], per_station=16)
    assert ledger.frame_ids("s1") == ["a"] and ledger.dropped_torn
    assert entries(path) == [HEADER, {"s": "s1", "f": "a"}]  # rewritten without it
    ledger.close()


def test_stations_no_longer_configured_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps(HEADER) + '\n{"s":"old","f":"a"}\n{"s":"s1","f":"b"}\n')
    ledger = AppliedLedger(path, ["s1"], per_station=16)
    assert ledger.frame_ids("s1") == ["b"] and ledger.frame_ids("old") == []
    ledger.close()


HEAD = json.dumps(HEADER).encode() + b"\n"


@pytest.mark.parametrize(
    "content",
    [
        b'{"s":"s1","f":"a"}\n',  # no header
        json.dumps({**HEADER, "version": 2}).encode() + b"\n",  # a format this bridge does not know
        HEAD + b'not json\n{"s":"s1","f":"b"}\n',
        HEAD + b'{"s":"s1","f":"a","x":1}\n',
        HEAD + b'{"s":"../etc","f":"a"}\n',
        HEAD + b'{"s":"s1","f":""}\n',
        HEAD + b'{"s":"s1","f":7}\n',
        HEAD + b'["s1","a"]\n',
        HEAD + json.dumps({"s": "s1", "f": "x" * 300}).encode() + b"\n",
        HEAD + b"x" * 10_000,  # a line beyond any entry's length, even unended
        HEAD + b'{"s":"s1","f":"\xff"}\n',  # not UTF-8
    ],
)
def test_a_corrupt_ledger_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(content)
    with pytest.raises(LedgerError, match=r"ledger .* is unreadable at line \d+"):
        AppliedLedger(path, ["s1"], per_station=16)
    assert path.read_bytes() == content  # left as it was, for the operator to look at


def test_a_ledger_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError, match="PLC bridge ledger"):
        AppliedLedger(blocker / "ledger.jsonl", ["s1"], per_station=16)  # its directory is a file


class RecordingPlc:
    """A PLC target that notes, at each station write, what the ledger file holds at that moment."""

    name = "recording"

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path
        self.writes: list[tuple[str, list[object]]] = []

    async def connect(self) -> None: ...
    async def close(self) -> None: ...

    async def read_station(self, index: int, station_id: str) -> StationState:
        return StationState()

    async def read_part_trigger(self, index: int, station_id: str) -> int:
        return 0

    async def write_station(self, index: int, station_id: str, state: StationState) -> None:
        self.writes.append((state.last_frame_id, entries(self.ledger_path)))

    async def write_line(self, line: LineState, station_count: int) -> None: ...


class Record:
    def __init__(self, value: bytes, offset: int) -> None:
        self.value, self.key, self.offset, self.partition = value, b"s1", offset, 0


def test_the_bridge_has_a_verdict_on_disk_before_the_plc_write_that_shows_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    cfg = PlcBridgeSettings(stations=["s1"], ledger_path=path, verdict_deadline_ms=0)
    settings = Settings(plc_bridge=cfg)

    async def run() -> list[tuple[str, list[object]]]:
        plc = RecordingPlc(path)
        bridge = PlcBridge(settings, targets=[plc])
        for offset, frame_id in enumerate(("a", "b")):
            verdict = build.verdict(frame_id, "pass", station_id="s1")
            await bridge._handle(Record(encode(verdict), offset), None, None)
        await bridge._flush()
        await bridge._handle(Record(encode(build.verdict("c", "reject", station_id="s1")), 2), None, None)
        await bridge._flush()
        bridge.ledger.close()
        return plc.writes

    writes = asyncio.run(run())
    assert writes == [
        ("b", [HEADER, {"s": "s1", "f": "a"}, {"s": "s1", "f": "b"}]),
        ("c", [HEADER, {"s": "s1", "f": "a"}, {"s": "s1", "f": "b"}, {"s": "s1", "f": "c"}]),
    ]


def test_one_bridge_per_ledger_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    first = AppliedLedger(path, ["s1"], per_station=16)
    with pytest.raises(LedgerError, match="in use by another process"):
        AppliedLedger(path, ["s1"], per_station=16)
    first.close()
    AppliedLedger(path, ["s1"], per_station=16).close()  # free again once the first is closed


class AssigningConsumer:
    """A consumer whose first fetch brings the assignment together with two records (aiokafka can
    return records from the very call during which the partitions were assigned)."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.assigned: set[str] = set()
        self.commits: list[dict[str, int]] = []

    def assignment(self) -> set[str]:
        return self.assigned

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[str, list[Record]]:
        if self.assigned:
            return {}
        self.assigned = {"tp"}
        return {"tp": self.records}

    async def position(self, tp: str) -> int:
        return self.records[-1].offset + 1  # past the records already fetched

    async def commit(self, offsets: dict[str, int]) -> None:
        self.commits.append(dict(offsets))


def test_records_fetched_while_waiting_for_the_assignment_are_applied_not_committed_away(
    tmp_path: Path,
) -> None:
    cfg = PlcBridgeSettings(stations=["s1"], ledger_path=tmp_path / "ledger.jsonl", verdict_deadline_ms=0)
    records = [Record(encode(build.verdict(f, "pass", station_id="s1")), o) for o, f in ((7, "a"), (8, "b"))]

    async def run() -> tuple[dict[str, list[Record]], list[dict[str, int]]]:
        bridge = PlcBridge(Settings(plc_bridge=cfg), targets=[RecordingPlc(cfg.ledger_path)])
        consumer = AssigningConsumer(records)
        early = await bridge._await_assignment(consumer, asyncio.Event())
        bridge.ledger.close()
        return early, consumer.commits

    early, commits = asyncio.run(run())
    assert early == {"tp": records}  # handed to intake, which applies them first
    assert commits == [{"tp": 7}]  # the starting offset is the first of them, not past them
