"""A real hot folder (inotify through watchdog, or polling), without Kafka: what becomes a frame,
when, and what happens to the files."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferSet
from services.camera_gateway.config import FolderSource
from services.camera_gateway.core import (
    CameraIdentity,
    ClaimCheckLargeFrames,
    LargeFrames,
    Outgoing,
    RefuseLargeFrames,
)
from services.camera_gateway.sources.base import FrameSink
from services.camera_gateway.sources.folder import HotFolder
from shared.errors import ConfigError
from shared.frames_store import ClaimStore
from shared.limits import MAX_IMAGE_BYTES
from shared.messages.codec import decode
from shared.messages.schemas import CameraLedger, Frame, LedgerFile
from shared.settings import OverflowPolicy
from tests.support.images import image_bytes, write_atomically


@dataclass
class Running:
    folder: HotFolder
    buffers: BufferSet
    got: list[Outgoing]

    async def frames(self, count: int, timeout: float = 10.0) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.got)} of {count} frames after {timeout}s")
            with contextlib.suppress(TimeoutError):
                self.got += await asyncio.wait_for(self.buffers.take(16), 0.1)
        return [decode(item.value, Frame) for item in self.got]


@contextlib.asynccontextmanager
async def hot_folder(
    path: Path,
    camera: str,
    *,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    large_frames: LargeFrames | None = None,
    **options: Any,
) -> AsyncIterator[Running]:
    config = FolderSource(path=path, **{"settle_s": 0.2, "rescan_s": 0.5, **options})
    buffers = BufferSet()
    buffers.add_camera(camera, 16, 1 << 26, OverflowPolicy.BLOCK)
    metrics.prepare([camera])
    sink = FrameSink(
        CameraIdentity(camera, "station-1", "line-1"),
        buffers,
        max_image_bytes,
        large_frames or RefuseLargeFrames(),
    )
    folder = HotFolder(config, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(folder.run(stop))
    try:
        yield Running(folder, buffers, [])
    finally:
        stop.set()
        await buffers.close()
        await asyncio.wait_for(task, 10)


def dropped(camera: str, reason: str) -> float:
    labels = {"camera_id": camera, "reason": reason}
    return metrics.REGISTRY.get_sample_value("lineguard_camera_gateway_frames_dropped_total", labels) or 0.0


async def wait_for_path(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        await asyncio.sleep(0.05)


async def test_every_image_file_becomes_one_frame_only_once_fully_written(tmp_path: Path) -> None:
    early = image_bytes("PNG", seed=1)
    (tmp_path / "early.png").write_bytes(early)  # there before the gateway
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / ".hidden.png").write_bytes(image_bytes("PNG", seed=9))
    async with hot_folder(tmp_path, "cam-write") as running:
        await running.frames(1)
        renamed = image_bytes("JPEG", seed=2)
        write_atomically(tmp_path / "renamed.jpg", renamed)
        slow = image_bytes("PNG", size=(200, 100), seed=3)
        with open(tmp_path / "slow.png", "wb") as handle:  # a camera writing slowly, in two parts
            handle.write(slow[: len(slow) // 2])
            handle.flush()
            await asyncio.sleep(1.0)  # far longer than settle_s: only the content says it is unfinished
            handle.write(slow[len(slow) // 2 :])
        frames = await running.frames(3)
        await asyncio.sleep(1.2)  # two more rescans: nothing is sent twice
        assert len(running.got) == 3
    by_file = {f.attributes["file"]: f for f in frames}
    assert set(by_file) == {"early.png", "renamed.jpg", "slow.png"}
    assert by_file["early.png"].image == early and by_file["early.png"].encoding == "png"
    assert by_file["renamed.jpg"].image == renamed and by_file["renamed.jpg"].encoding == "jpeg"
    assert by_file["slow.png"].image == slow and (by_file["slow.png"].width, by_file["slow.png"].height) == (
        200,
        100,
    )
    assert by_file["slow.png"].captured_at == (tmp_path / "slow.png").stat().st_mtime_ns
    assert {i.file.name for i in running.got if i.file} == {"early.png", "renamed.jpg", "slow.png"}
    assert (tmp_path / "notes.txt").exists() and (tmp_path / ".hidden.png").exists()


async def test_committed_files_are_moved_or_deleted(tmp_path: Path) -> None:
    moved, deleted = tmp_path / "moved", tmp_path / "deleted"
    moved.mkdir()
    deleted.mkdir()
    for folder in (moved, deleted):
        (folder / "a.png").write_bytes(image_bytes(seed=1))
    async with hot_folder(moved, "cam-move", done_dir=tmp_path / "done") as running:
        await running.frames(1)
        await running.folder.dispose(running.got)
    assert not (moved / "a.png").exists() and (tmp_path / "done" / "a.png").read_bytes() == image_bytes(
        seed=1
    )
    async with hot_folder(deleted, "cam-delete", after="delete") as running:
        await running.frames(1)
        await running.folder.dispose(running.got)
    assert not (deleted / "a.png").exists() and not (deleted / "done").exists()


async def test_a_name_used_again_keeps_both_files_in_done(tmp_path: Path) -> None:
    async with hot_folder(tmp_path, "cam-reuse") as running:
        (tmp_path / "shot.png").write_bytes(image_bytes(seed=1))
        await running.frames(1)
        await running.folder.dispose(running.got[:1])
        (tmp_path / "shot.png").write_bytes(image_bytes(seed=2))
        await running.frames(2)
        await running.folder.dispose(running.got[1:])
    assert len(list((tmp_path / "done").iterdir())) == 2


async def test_a_file_rewritten_after_it_was_read_is_not_moved_away_unsent(tmp_path: Path) -> None:
    async with hot_folder(tmp_path, "cam-rewrite") as running:
        (tmp_path / "a.png").write_bytes(image_bytes(seed=1))
        await running.frames(1)
        (tmp_path / "a.png").write_bytes(image_bytes(seed=2))  # before the first frame was committed
        os.utime(tmp_path / "a.png", ns=(1, 1))
        await running.folder.dispose(running.got)
        assert (tmp_path / "a.png").exists()
        frames = await running.frames(2)  # the new content is a new frame
    assert frames[1].image == image_bytes(seed=2) and frames[0].frame_id != frames[1].frame_id


async def test_files_that_cannot_be_frames_go_to_rejected_and_are_counted(tmp_path: Path) -> None:
    camera = "cam-reject"
    before = {r: dropped(camera, r) for r in ("unreadable", "too_large")}
    async with hot_folder(tmp_path, camera, incomplete_after_s=0.6, max_image_bytes=4096) as running:
        (tmp_path / "garbage.png").write_bytes(os.urandom(500))  # never completes
        (tmp_path / "animation.png").write_bytes(image_bytes("GIF"))  # a GIF by content
        (tmp_path / "big.png").write_bytes(image_bytes("PNG", size=(200, 200)))  # over 4096 bytes
        (tmp_path / "ok.png").write_bytes(image_bytes("PNG", size=(8, 8)))
        for name in ("garbage.png", "animation.png", "big.png"):
            await wait_for_path(tmp_path / "rejected" / name)
        frames = await running.frames(1)
    assert [f.attributes["file"] for f in frames] == ["ok.png"]
    assert dropped(camera, "unreadable") - before["unreadable"] == 2
    assert dropped(camera, "too_large") - before["too_large"] == 1


async def test_files_the_ledger_names_are_moved_away_without_a_frame(tmp_path: Path) -> None:
    sent = image_bytes(seed=1)
    (tmp_path / "sent.png").write_bytes(sent)
    (tmp_path / "reused.png").write_bytes(image_bytes(seed=2))
    async with hot_folder(tmp_path, "cam-ledger") as running:
        await running.frames(2)
        identities = {i.file.name: (i.file.identity, i.frame_id) for i in running.got if i.file}
    # A restart: the ledger names sent.png (same identity) and reused.png with another identity.
    ledger = CameraLedger(
        "cam-ledger",
        [
            LedgerFile("sent.png", *identities["sent.png"]),
            LedgerFile("reused.png", "0" * 64, "cam-ledger-old"),
            LedgerFile("gone.png", "1" * 64, "cam-ledger-gone"),
        ],
        1,
    )
    async with hot_folder(tmp_path, "cam-ledger") as running:
        assert await running.folder.reconcile(ledger) == 1
        frames = await running.frames(1)
        await asyncio.sleep(0.8)
        assert len(running.got) == 1
    assert (tmp_path / "done" / "sent.png").read_bytes() == sent
    assert [f.attributes["file"] for f in frames] == ["reused.png"]


async def test_polling_finds_files_without_events(tmp_path: Path) -> None:
    async with hot_folder(tmp_path, "cam-poll", polling=True) as running:
        (tmp_path / "a.png").write_bytes(image_bytes())
        assert len(await running.frames(1)) == 1


def test_a_missing_or_unwritable_folder_is_a_config_error(tmp_path: Path) -> None:
    sink = FrameSink(CameraIdentity("c", "s", "l"), BufferSet(), MAX_IMAGE_BYTES, RefuseLargeFrames())
    with pytest.raises(ConfigError, match="does not exist"):
        HotFolder(FolderSource(path=tmp_path / "missing"), sink)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create"):
        HotFolder(FolderSource(path=tmp_path, done_dir=blocker / "done"), sink)


async def test_a_file_over_the_inline_limit_goes_by_claim_check(tmp_path: Path) -> None:
    store = ClaimStore(tmp_path / "store")
    folder = tmp_path / "in"
    folder.mkdir()
    data = image_bytes(size=(400, 300))
    assert len(data) > 4096
    async with hot_folder(
        folder, "cam-claim", max_image_bytes=4096, large_frames=ClaimCheckLargeFrames(store)
    ) as running:
        write_atomically(folder / "big.png", data)
        (sent,) = await running.frames(1)
    assert sent.image is None and sent.image_ref is not None and (sent.width, sent.height) == (400, 300)
    assert store.fetch(sent.image_ref) == data and dropped("cam-claim", "too_large") == 0


def test_a_frame_over_the_wires_pixel_limit_goes_by_reference_or_is_refused(tmp_path: Path) -> None:
    metrics.prepare(["cam-px"])
    camera = CameraIdentity("cam-px", "s", "l")
    frame = Frame("f-1", "l", "s", "cam-px", 1, "png", image_bytes(), width=5472, height=3648)
    refusing = FrameSink(camera, BufferSet(), MAX_IMAGE_BYTES, RefuseLargeFrames())
    before = dropped("cam-px", "too_large")
    assert refusing.prepare(frame) is None and dropped("cam-px", "too_large") == before + 1
    store = ClaimStore(tmp_path)
    item = FrameSink(camera, BufferSet(), MAX_IMAGE_BYTES, ClaimCheckLargeFrames(store)).prepare(frame)
    assert item is not None
    sent = decode(item.value, Frame)
    assert sent.image_ref is not None and store.fetch(sent.image_ref) == frame.image
