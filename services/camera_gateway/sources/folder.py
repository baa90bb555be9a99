"""A hot folder: each new image file becomes exactly one frame, then is moved or deleted.

watchdog reports new, changed, closed and renamed files (inotify on Linux; polling for network
filesystems, which send no events); a full listing every ``rescan_s`` catches anything missed and
the files already there at start. A file is read once it is fully written (``ReadinessTracker``
and the format's end marker), becomes a frame, and waits in the folder until its frame is
committed; only then is it moved to ``done/`` (or deleted), and the folder synced, before the
publisher's next transaction. Files that cannot be frames go to ``rejected/``.

The folder itself is the buffer of a hot folder: when Kafka is slow the source waits, and files
wait on disk. Only direct children are watched, so ``done/`` and ``rejected/`` may live inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferClosed
from services.camera_gateway.config import FolderSource as FolderConfig
from services.camera_gateway.core import (
    CommittedFile,
    FileSnapshot,
    Outgoing,
    ReadinessTracker,
    file_frame,
    is_complete,
)
from services.camera_gateway.sources.base import FrameSink
from services.camera_gateway.sources.watching import observing, wake_or_tick
from shared.errors import ConfigError, ImageError
from shared.limits import MAX_FILE_BYTES
from shared.messages.schemas import CameraLedger
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.camera_gateway.folder")

TICK_S = 0.05  # how often ready files are looked for (events wake it sooner)


class HotFolder:
    def __init__(self, config: FolderConfig, sink: FrameSink) -> None:
        self.config = config
        self.sink = sink
        self.camera_id = sink.camera.camera_id
        self.folder = config.path
        self.tracker = ReadinessTracker(config.settle_s, config.incomplete_after_s)
        self._in_flight: set[Path] = set()  # read and buffered or being sent: not yet disposed
        self._patterns = [p.lower() for p in config.patterns]
        self._wake = asyncio.Event()
        self.check()

    def check(self) -> None:
        """The folder exists and the gateway can create and write its done/ and rejected/ folders."""
        if not self.folder.is_dir():
            raise ConfigError(f"camera {self.camera_id}: hot folder {self.folder} does not exist")
        targets = [self.config.rejected] + ([self.config.done] if self.config.after == "move" else [])
        for target in targets:
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"camera {self.camera_id}: cannot create {target}: {exc.strerror}"
                ) from None
            if not os.access(target, os.W_OK | os.X_OK):
                raise ConfigError(f"camera {self.camera_id}: {target} is not writable")
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise ConfigError(f"camera {self.camera_id}: files cannot be moved out of {self.folder}")

    def wanted(self, path: Path) -> bool:
        """A direct child of the folder whose name matches the patterns (dot files never do)."""
        if path.parent != self.folder or path.name.startswith("."):
            return False
        name = path.name.lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._patterns)

    # ---- after a restart ----------------------------------------------------------------------

    async def reconcile(self, ledger: CameraLedger | None) -> int:
        """Move away the files the ledger names that are still here: their frames were committed."""
        done = 0
        for entry in ledger.files if ledger is not None else []:
            path = self.folder / entry.name
            snapshot = await asyncio.to_thread(_read, path, self.folder)
            if snapshot is None or snapshot.identity != entry.identity:
                continue  # moved away already, or a new file under the same name
            file = CommittedFile(self.folder, entry.name, entry.identity, snapshot.size, snapshot.mtime_ns)
            await asyncio.to_thread(self._dispose_one, file)
            done += 1
            metrics.FILES_RECONCILED.labels(camera_id=self.camera_id).inc()
            log_event(
                log, "file_already_sent", camera_id=self.camera_id, file=entry.name, frame_id=entry.frame_id
            )
        if done:
            await asyncio.to_thread(_sync_dir, self.folder)
        return done

    # ---- watching ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        observer = PollingObserver(timeout=1.0) if self.config.polling else Observer()
        observer.schedule(_Events(self, loop), str(self.folder), recursive=False)
        try:
            async with observing(observer):
                metrics.SOURCE_UP.labels(camera_id=self.camera_id).set(1)
                log_event(log, "hot_folder_watching", camera_id=self.camera_id, folder=str(self.folder))
                next_scan = 0.0
                while not stop.is_set():
                    now = time.monotonic()
                    if now >= next_scan:
                        await self._scan()
                        next_scan = now + self.config.rescan_s
                    try:
                        await self._step(stop)
                    except BufferClosed:  # stopping: a file read but not buffered stays in the folder
                        return
                    await wake_or_tick(self._wake, TICK_S)
        finally:
            metrics.SOURCE_UP.labels(camera_id=self.camera_id).set(0)

    def seen(self, path: Path, closed: bool = False) -> None:
        """A watchdog event (or the listing) saw ``path``: note its size and time."""
        if path in self._in_flight or not self.wanted(path):
            return
        stat = _stat(path)
        if stat is None:
            self.tracker.forget(path)
            return
        self.tracker.seen(path, stat[0], stat[1], time.monotonic(), closed=closed)
        self._wake.set()

    async def _scan(self) -> None:
        names = await asyncio.to_thread(_list, self.folder)
        for name in names:
            self.seen(self.folder / name)
        self._pending_gauge()

    async def _step(self, stop: asyncio.Event) -> None:
        readiness = self.tracker.poll(time.monotonic(), _stat)
        for path in readiness.stuck:
            self.tracker.forget(path)
            await self._reject(path, "unreadable", "incomplete or undecodable, and unchanged for too long")
        for path in readiness.ready:
            if stop.is_set():
                return
            await self._take(path)
        self._pending_gauge()

    async def _take(self, path: Path) -> None:
        try:
            snapshot = await asyncio.to_thread(_read, path, self.folder)
        except ImageError as exc:  # too large to read
            self.tracker.forget(path)
            await self._reject(path, "too_large", exc.detail)
            return
        if snapshot is None:
            self.tracker.forget(path)
            return
        now = time.monotonic()
        if (snapshot.size, snapshot.mtime_ns) != (_stat(path) or (-1, -1)):
            self.seen(path)  # still changing
            return
        if not is_complete(snapshot.data):
            self.tracker.incomplete(path, now)
            return
        try:
            frame = await asyncio.to_thread(file_frame, self.sink.camera, snapshot)
        except ImageError as exc:
            if exc.reason == "corrupt":  # perhaps still being written: wait until it is stuck
                self.tracker.incomplete(path, now)
                return
            self.tracker.forget(path)
            reason = "too_large" if exc.reason == "too_large" else "unreadable"
            await self._reject(path, reason, str(exc))
            return
        self.tracker.forget(path)
        committed = CommittedFile(
            self.folder, snapshot.name, snapshot.identity, snapshot.size, snapshot.mtime_ns
        )
        item = await asyncio.to_thread(self.sink.prepare, frame, committed)  # may write a claim check
        if item is None:  # refused (counted by the sink)
            await asyncio.to_thread(self._move, path, self.config.rejected)
            return
        self._in_flight.add(path)
        await self.sink.put(item)  # waits while the camera's buffer is full

    async def _reject(self, path: Path, reason: str, detail: str) -> None:
        self.sink.refused(path.name, reason, detail)
        await asyncio.to_thread(self._move, path, self.config.rejected)

    def _pending_gauge(self) -> None:
        metrics.FILES_PENDING.labels(camera_id=self.camera_id).set(len(self.tracker) + len(self._in_flight))

    # ---- after the commit ------------------------------------------------------------------------

    async def dispose(self, items: Sequence[Outgoing]) -> None:
        """Move or delete the files of committed frames, then sync the folder: this must be on disk
        before the next transaction's ledger record stops naming them. Raises on failure."""
        files = [item.file for item in items if item.file is not None]
        await asyncio.to_thread(self._dispose_all, files)
        for file in files:
            self._in_flight.discard(file.path)
        self._pending_gauge()

    def _dispose_all(self, files: Sequence[CommittedFile]) -> None:
        for file in files:
            self._dispose_one(file)
        _sync_dir(self.folder)

    def _dispose_one(self, file: CommittedFile) -> None:
        stat = _stat(file.path)
        if stat is None:
            log_event(log, "sent_file_gone", logging.WARNING, camera_id=self.camera_id, file=file.name)
            return
        if stat != (file.size, file.mtime_ns):
            # Rewritten under the same name after it was read: that is a new file, left for the watcher.
            log_event(log, "sent_file_rewritten", logging.WARNING, camera_id=self.camera_id, file=file.name)
            return
        if self.config.after == "delete":
            file.path.unlink()
        else:
            self._move(file.path, self.config.done, suffix=file.identity[:12])

    def _move(self, path: Path, target_dir: Path, suffix: str | None = None) -> None:
        target = target_dir / path.name
        if target.exists():  # a camera that reuses names: keep both
            tag = suffix or f"{time.time_ns():x}"
            target = target_dir / f"{path.stem}.{tag}{path.suffix}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another filesystem: copy under a temporary name, then rename, so done/ never holds
            # half a file, and only then remove the original.
            partial = target_dir / f".{target.name}.partial"
            shutil.copyfile(path, partial)
            with open(partial, "rb") as copied:
                os.fsync(copied.fileno())
            os.replace(partial, target)
            path.unlink()
        _sync_dir(target_dir)


class _Events(FileSystemEventHandler):
    """watchdog's callbacks (its own thread) -> ``HotFolder.seen`` on the event loop."""

    def __init__(self, folder: HotFolder, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.folder = folder
        self.loop = loop

    def dispatch(self, event: FileSystemEvent) -> None:
        path: bytes | str
        if isinstance(event, FileMovedEvent):
            path, closed = event.dest_path, True  # renamed into place: written completely
        elif isinstance(event, FileClosedEvent):
            path, closed = event.src_path, True
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            path, closed = event.src_path, False
        else:
            return
        text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self.folder.seen, Path(text), closed)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if path.is_file() else None


def _list(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]


def _read(path: Path, folder: Path) -> FileSnapshot | None:
    """The file's bytes with the size and time they were read at; None if it is gone."""
    try:
        with open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            if before.st_size > MAX_FILE_BYTES:
                raise ImageError("too_large", f"{path.name} is {before.st_size} bytes, over {MAX_FILE_BYTES}")
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    return FileSnapshot(path, str(path.relative_to(folder)), len(data), before.st_mtime_ns, data)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
