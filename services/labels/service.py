"""``lineguard labels export``: read feedback and its frames from Kafka, write the labelled set.

1. The whole ``feedback`` topic, to the end it had when the export started: the latest judgement per
   frame (``core.latest_feedback``).
2. Each judged frame's pixels, from the first place that has them: the frames store
   (``LINEGUARD_LABELS__FRAMES_DIR``, where the console saves judged frames), the ``defects`` topic
   (rejects and reviews, three days), the ``frames`` topic (every frame, one hour). A frame found
   nowhere is listed as skipped (``no_frame``).
3. With a staging folder: passes far below the threshold on ``verdicts``, sampled per class
   (``core.BottomK``), whose frames are still on ``frames``.

The set is written to a new folder beside ``--out`` and swapped in whole, so a reader sees the old
set or the new one, and a frame relabelled since the last export leaves no stale copy behind.
Everything read is decoded by the codec and the bounded pixel decoder; image bytes are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path

import numpy as np

from services.labels.core import (
    NORMALS_SUMMARY_FILE,
    SUMMARY_FILE,
    BottomK,
    ExportSummary,
    Placement,
    Skipped,
    is_normal_candidate,
    place,
    region_mask,
    regions_fit,
)
from services.labels.feedback_topic import read_latest_feedback
from shared.errors import ConfigError, ImageError, MessageError
from shared.frames_store import (
    ClaimStore,
    FrameStore,
    frame_file_stem,
    image_of,
    png_bytes,
    write_atomically,
)
from shared.kafka.reading import read_topic
from shared.limits import MAX_IMAGE_BYTES, MAX_PIXELS
from shared.messages.codec import decode
from shared.messages.schemas import DefectEvent, Feedback, Frame, Verdict
from shared.settings import Settings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.labels")


def _fresh_folder(target: Path, marker: str) -> Path:
    """A new empty folder beside ``target`` to build in; ``target`` must be absent, empty, or an
    earlier export (it holds ``marker``), never a folder of other files."""
    if target.exists() and (
        not target.is_dir() or (any(target.iterdir()) and not (target / marker).is_file())
    ):
        raise ConfigError(f"{target} is not empty and not an earlier export: choose an empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    return building


def _swap_in(building: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(building, target)
    shutil.rmtree(old, ignore_errors=True)


class LabelExport:
    def __init__(self, settings: Settings, *, frames_dir: Path | None = None) -> None:
        self.settings = settings
        self.cfg = settings.labels
        root = frames_dir or self.cfg.frames_dir
        self.store = FrameStore(root) if root else None
        self.claims = ClaimStore.from_settings(settings)  # claim-checked frames on the topics

    async def run(self, out: Path, normals_dir: Path | None = None) -> ExportSummary:
        summary = ExportSummary(exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        building = _fresh_folder(out, SUMMARY_FILE)
        staging = _fresh_folder(normals_dir, NORMALS_SUMMARY_FILE) if normals_dir else None
        try:
            judged = await self._feedback(summary)
            summary.feedback = len(judged)
            wanted: dict[str, Placement] = {}
            for feedback in judged.values():
                placement = place(feedback)
                if isinstance(placement, Skipped):
                    summary.skip(placement.frame_id, placement.reason)
                else:
                    wanted[feedback.frame_id] = placement

            def write(frame_id: str, pixels: np.ndarray, source: str) -> None:
                self._write(building, wanted.pop(frame_id), pixels, source, summary)

            self._from_store(wanted, write, summary)
            if wanted:
                await self._scan_defects(wanted, write, summary)
            sampler = BottomK(self.cfg.normals_per_class) if staging else None
            candidates = await self._normal_candidates(set(judged)) if sampler else {}
            if wanted or candidates:
                await self._scan_frames(wanted, write, candidates, sampler, staging, summary)
            for frame_id in sorted(wanted):
                summary.skip(frame_id, "no_frame")
            if sampler is not None and staging is not None:
                summary.normals = sampler.counts()
                self._write_summary(staging / NORMALS_SUMMARY_FILE, summary.exported_at, summary.normals)
            write_atomically(building / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2).encode())
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_in(building, out)
        if staging is not None and normals_dir is not None:
            _swap_in(staging, normals_dir)
        log_event(
            log,
            "labels exported",
            out=str(out),
            feedback=summary.feedback,
            skipped=len(summary.skipped),
            masks=summary.masks,
            normals=sum(summary.normals.values()),
        )
        return summary

    @staticmethod
    def _write_summary(path: Path, exported_at: str, normals: dict[str, int]) -> None:
        body = {"exported_at": exported_at, "normals": normals}
        write_atomically(path, json.dumps(body, indent=2).encode())

    async def _feedback(self, summary: ExportSummary) -> dict[str, Feedback]:
        def skipped(offset: int, exc: MessageError) -> None:
            summary.bad_records += 1
            log_event(log, "feedback record skipped", logging.WARNING, offset=offset, reason=exc.reason)

        return await read_latest_feedback(self.settings, self.cfg.read_timeout_s, skipped)

    def _from_store(
        self,
        wanted: dict[str, Placement],
        write: Callable[[str, np.ndarray, str], None],
        summary: ExportSummary,
    ) -> None:
        if self.store is None:
            return
        for frame_id in list(wanted):
            try:
                pixels = self.store.load(frame_id)
            except ImageError as exc:
                log_event(
                    log, "stored frame unreadable", logging.WARNING, frame_id=frame_id, reason=exc.reason
                )
                continue
            if pixels is not None:
                write(frame_id, pixels, "frames_store")

    async def _scan_defects(
        self,
        wanted: dict[str, Placement],
        write: Callable[[str, np.ndarray, str], None],
        summary: ExportSummary,
    ) -> None:
        async with aclosing(read_topic(self.settings, "defects", self.cfg.read_timeout_s)) as records:
            async for record in records:
                if not wanted:
                    break
                try:
                    event = decode(record.value, DefectEvent)
                except MessageError:
                    continue
                frame_id = event.verdict.frame_id
                if frame_id not in wanted:
                    continue
                pixels = self._pixels(event, frame_id)
                if pixels is not None:
                    write(frame_id, pixels, "defects")

    async def _normal_candidates(self, judged: set[str]) -> dict[str, str]:
        """Frame id -> class of every pass far enough below the threshold (not judged already)."""
        candidates: dict[str, str] = {}
        async for record in read_topic(self.settings, "verdicts", self.cfg.read_timeout_s):
            try:
                verdict = decode(record.value, Verdict)
            except MessageError:
                continue
            if verdict.frame_id not in judged and is_normal_candidate(verdict, self.cfg.normal_below):
                candidates[verdict.frame_id] = verdict.product_class
        return candidates

    async def _scan_frames(
        self,
        wanted: dict[str, Placement],
        write: Callable[[str, np.ndarray, str], None],
        candidates: dict[str, str],
        sampler: BottomK | None,
        staging: Path | None,
        summary: ExportSummary,
    ) -> None:
        async with aclosing(read_topic(self.settings, "frames", self.cfg.read_timeout_s)) as records:
            async for record in records:
                if not wanted and not candidates:
                    break
                try:
                    frame = decode(record.value, Frame)
                except MessageError:
                    continue
                frame_id = frame.frame_id
                if frame_id in wanted:
                    pixels = self._pixels(frame, frame_id)
                    if pixels is not None:
                        write(frame_id, pixels, "frames")
                elif sampler is not None and staging is not None and frame_id in candidates:
                    product_class = candidates.pop(frame_id)
                    pixels = self._pixels(frame, frame_id)
                    if pixels is None:
                        continue
                    accepted, evicted = sampler.offer(product_class, frame_id)
                    folder = staging / product_class / "train" / "good"
                    if evicted is not None:
                        (folder / f"{frame_file_stem(evicted)}.png").unlink(missing_ok=True)
                    if accepted:
                        write_atomically(folder / f"{frame_file_stem(frame_id)}.png", png_bytes(pixels))

    def _pixels(self, message: Frame | DefectEvent, frame_id: str) -> np.ndarray | None:
        """The message's frame (a claim-checked one fetched and verified), or None (logged)."""
        try:
            image = image_of(message, self.claims, max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_PIXELS)
            return image.pixels(message)
        except ImageError as exc:
            log_event(log, "frame unreadable", logging.WARNING, frame_id=frame_id, reason=exc.reason)
            return None

    @staticmethod
    def _write(
        root: Path, placement: Placement, pixels: np.ndarray, source: str, summary: ExportSummary
    ) -> None:
        height, width = pixels.shape[:2]
        feedback = placement.feedback
        with_mask = placement.mask is not None
        if with_mask and not regions_fit(feedback, width, height):
            summary.skip(placement.frame_id, "region_outside")
            return
        write_atomically(root / placement.image, png_bytes(pixels))
        if placement.mask is not None:
            write_atomically(root / placement.mask, png_bytes(region_mask(feedback.regions, width, height)))
        summary.placed(placement, source, with_mask)
