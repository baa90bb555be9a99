"""The applied-verdicts ledger: which verdicts the bridge applied, on disk, so that a restarted
bridge (after SIGKILL too) does not apply again the verdicts Kafka replays to it.

Offsets are committed after the PLC shows a verdict, so a bridge that dies in between is given those
verdicts again. Each applied verdict is noted here as (station, frame id), and the note is on disk
(written and fsynced) before the PLC write that shows it begins: what the PLC shows is always in the
ledger. On start, ``BridgeCore.recover`` compares each station's notes with the frame id the PLC
shows; see there for what happens to each replay.

The file: a header line, then one JSON object per applied verdict, ``{"s": station, "f": frame id}``,
in the order applied. Appends are batched: the output loop calls ``sync`` before each PLC write,
which writes what was noted since and fsyncs it (in a worker thread, so the outputs' clock is not
held by the disk).

Bounded: the last ``per_station`` frame ids of each configured station are kept (older ones are
counted by ``take_evicted``); the file is rewritten (atomically: a temporary file, fsync, rename,
fsync of the directory) at start and whenever it holds twice the live entries.

One bridge per file: ``<path>.lock`` is held (``flock``) while the ledger is open, so a second
bridge given the same path refuses to start instead of mixing its entries in. The kernel drops the
lock when the process dies, SIGKILL included.

Read back strictly (never unpickled): a last line without its newline is a write the crash cut
short (its fsync never finished, so the PLC never showed it) and is dropped; any other line that is
not a valid entry makes the ledger unreadable, a ``LedgerError`` that stops the bridge at start. A
bridge that ignored it could apply a replayed pass to a part nobody inspected; moving the file
aside is the operator's decision (docs/operations.md, "Replays after a crash").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Never

from services.plc_bridge.core import STATION_ID
from shared.errors import LineguardError
from shared.limits import ID_MAX

HEADER = {"lineguard": "plc-bridge-applied-verdicts", "version": 1}
MAX_LINE_BYTES = 4096  # an entry is a station id (<= 64) and a frame id (<= ID_MAX chars), escaped
MIN_REWRITE_LINES = 1024  # below this the file is never rewritten for size


class LedgerError(LineguardError):
    """The applied-verdicts ledger cannot be read or written."""

    default_reason = "plc_ledger"


def _line(entry: object) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"


class AppliedLedger:
    """The last ``per_station`` applied frame ids of each of ``stations``, kept in ``path``."""

    def __init__(self, path: Path, stations: Iterable[str], per_station: int) -> None:
        self.path = Path(path)
        self._applied: dict[str, deque[str]] = {s: deque(maxlen=per_station) for s in stations}
        self._unwritten: list[str] = []  # entries noted since the last sync
        self._lines = 0  # entries in the file
        self._evicted = 0
        self.dropped_torn = False  # the file ended in a line the crash cut short
        self._lock: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = self._take_lock()
            self._load()
            self._unwritten.clear()  # what was read is on disk already
            self._rewrite(self._snapshot())
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except BaseException as exc:
            self._release_lock()
            if isinstance(exc, OSError):
                raise LedgerError(f"PLC bridge ledger {self.path}: {exc}") from exc
            raise
        self._evicted = 0  # what the start-up rewrite dropped was never live in this process

    # ---- what the bridge asks ---------------------------------------------------------------

    def frame_ids(self, station: str) -> list[str]:
        """The station's applied frame ids, oldest first."""
        return list(self._applied.get(station, ()))

    def note(self, station: str, frame_id: str) -> None:
        """An applied verdict; on disk at the next ``sync``, before the PLC write that shows it."""
        applied = self._applied[station]
        if len(applied) == applied.maxlen:
            self._evicted += 1
        applied.append(frame_id)
        self._unwritten.append(_line({"s": station, "f": frame_id}))

    @property
    def pending(self) -> bool:
        return bool(self._unwritten)

    async def sync(self) -> None:
        """Write and fsync every entry noted so far (a rewrite when the file has grown to twice the
        live entries). Only the output loop calls it, so no two run at once."""
        if not self._unwritten:
            return
        lines, self._unwritten = self._unwritten, []
        live = sum(len(d) for d in self._applied.values())
        try:
            if self._lines + len(lines) > 2 * max(live, MIN_REWRITE_LINES):
                snapshot = self._snapshot()  # includes ``lines``; taken here, before the thread runs
                self._file.close()
                await asyncio.to_thread(self._rewrite, snapshot)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            else:
                await asyncio.to_thread(self._append, lines)
        except OSError as exc:
            raise LedgerError(f"PLC bridge ledger {self.path} not written: {exc}") from exc

    def take_evicted(self) -> int:
        """Entries dropped by the per-station bound since the last call."""
        evicted, self._evicted = self._evicted, 0
        return evicted

    def close(self) -> None:
        self._file.close()
        self._release_lock()

    # ---- the file ---------------------------------------------------------------------------

    def _take_lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerError(
                f"PLC bridge ledger {self.path} is in use by another process (another bridge with the "
                "same LINEGUARD_PLC_BRIDGE__LEDGER_PATH?): each bridge needs its own"
            ) from None
        return fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock)  # closing the descriptor drops the flock
            self._lock = None

    def _snapshot(self) -> list[str]:
        return [_line({"s": s, "f": f}) for s, applied in self._applied.items() for f in applied]

    def _append(self, lines: list[str]) -> None:
        self._file.write("".join(lines))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines += len(lines)

    def _rewrite(self, lines: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(_line(HEADER))
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
        self._lines = len(lines)

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            number = 0
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                if not raw.endswith(b"\n"):
                    if len(raw) > MAX_LINE_BYTES:
                        self._refuse(number, f"a line longer than {MAX_LINE_BYTES} bytes")
                    self.dropped_torn = True  # the last line, cut short by a crash mid-write
                    return
                entry = self._parse(raw, number)
                if number == 1:
                    if entry != HEADER:
                        self._refuse(number, f"not a ledger header (expected {HEADER})")
                    continue
                station, frame_id = self._entry(entry, number)
                if station in self._applied:  # a station no longer configured is forgotten
                    self.note(station, frame_id)

    def _parse(self, raw: bytes, number: int) -> object:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self._refuse(number, "not a JSON line")

    def _entry(self, entry: object, number: int) -> tuple[str, str]:
        if not isinstance(entry, dict) or set(entry) != {"s", "f"}:
            self._refuse(number, 'not an entry {"s": station, "f": frame id}')
        station, frame_id = entry["s"], entry["f"]
        if not isinstance(station, str) or not STATION_ID.fullmatch(station):
            self._refuse(number, "not a valid station id")
        if not isinstance(frame_id, str) or not 1 <= len(frame_id) <= ID_MAX:
            self._refuse(number, f"not a frame id of 1-{ID_MAX} characters")
        return station, frame_id

    def _refuse(self, number: int, what: str) -> Never:
        raise LedgerError(
            f"PLC bridge ledger {self.path} is unreadable at line {number}: {what}. The bridge will "
            "not guess which verdicts the PLC already shows; see docs/operations.md, \"Replays after "
            "a crash\", before moving the file aside"
        )
