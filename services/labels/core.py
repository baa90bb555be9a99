"""Where each judged frame goes in an MVTec-layout labelled set, its mask, and the normals sampled.

Layout (what ``lineguard fit --labelled-defects-dir`` and ``--data`` read)::

    ROOT/<class>/test/<type>/<frame>.png                  a frame an operator marked defect
    ROOT/<class>/ground_truth/<type>/<frame>_mask.png     its regions (0/255), when it has any
    ROOT/<class>/train/good/<frame>.png                   a frame marked good: a confirmed normal
    ROOT/labels.json                                      what was exported, skipped and why

``<type>`` is the defect type as a folder name (``missing part`` -> ``missing_part``; no type:
``defect``). Confirmed normals sampled from passes go to a separate staging set,
``STAGING/<class>/train/good/``, for a person to look over before a refit uses them. Plain functions,
no Kafka: the service reads the topics and writes the files.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shared.engine.config import is_valid_class_name
from shared.frames_store import frame_file_stem
from shared.messages.schemas import Feedback, RegionMsg, Verdict

NO_TYPE_FOLDER = "defect"
SUMMARY_FILE = "labels.json"
NORMALS_SUMMARY_FILE = "normals.json"


def type_folder(defect_type: str) -> str:
    """A defect type as a folder name: lower case ``[a-z0-9_-]``, at most 64 characters; never
    ``good`` (the normal test folder)."""
    folder = re.sub(r"[^a-z0-9_-]+", "_", defect_type.strip().lower()).strip("_-")[:64]
    if not folder:
        return NO_TYPE_FOLDER
    return "defect_good" if folder == "good" else folder


@dataclass(frozen=True)
class Placement:
    frame_id: str
    product_class: str
    label: str
    image: str  # relative to the export root
    mask: str | None  # relative to the export root; None without regions
    feedback: Feedback = field(repr=False)


@dataclass(frozen=True)
class Skipped:
    frame_id: str
    reason: str  # no_class, no_frame, bad_frame, region_outside


def place(feedback: Feedback) -> Placement | Skipped:
    """Where a judged frame goes; frames of no known class cannot be placed."""
    name = feedback.product_class
    if not is_valid_class_name(name):
        return Skipped(feedback.frame_id, "no_class")
    stem = frame_file_stem(feedback.frame_id)
    if feedback.label == "good":
        return Placement(feedback.frame_id, name, "good", f"{name}/train/good/{stem}.png", None, feedback)
    folder = type_folder(feedback.defect_type)
    mask = f"{name}/ground_truth/{folder}/{stem}_mask.png" if feedback.regions else None
    return Placement(feedback.frame_id, name, "defect", f"{name}/test/{folder}/{stem}.png", mask, feedback)


def latest_feedback(records: Iterable[tuple[bytes | None, Feedback | None]]) -> dict[str, Feedback]:
    """The judgement that counts per frame, from the topic in order: the last one (a tombstone, a
    record with no value, withdraws it), as compaction would leave it."""
    latest: dict[str, Feedback] = {}
    for key, feedback in records:
        if feedback is None:
            if key is not None:
                latest.pop(key.decode("utf-8", "replace"), None)
            continue
        latest.pop(feedback.frame_id, None)
        latest[feedback.frame_id] = feedback
    return latest


def region_mask(regions: Iterable[RegionMsg], width: int, height: int) -> np.ndarray:
    """``height x width`` uint8, 255 inside any region (clipped to the frame), 0 elsewhere."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for r in regions:
        x0, y0 = max(0, r.x), max(0, r.y)
        x1, y1 = min(width, r.x + r.width), min(height, r.y + r.height)
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = 255
    return mask


def regions_fit(feedback: Feedback, width: int, height: int) -> bool:
    """The judged regions were drawn on a frame of this size (the one found)."""
    if feedback.width is not None and (feedback.width, feedback.height) != (width, height):
        return False
    return all(r.x + r.width <= width and r.y + r.height <= height for r in feedback.regions)


def is_normal_candidate(verdict: Verdict, normal_below: float) -> bool:
    """A pass far below the threshold (0.5), on time, scored by a model, of a known class."""
    return (
        verdict.decision == "pass"
        and not verdict.late
        and bool(verdict.model_version)
        and verdict.score <= normal_below
        and is_valid_class_name(verdict.product_class)
    )


def sample_key(frame_id: str) -> int:
    """A frame's place in the sample order: uniform, and the same on every run."""
    return int.from_bytes(hashlib.sha256(frame_id.encode("utf-8", "surrogatepass")).digest()[:8], "big")


class BottomK:
    """A uniform sample of at most ``k`` frames per class, independent of the order frames arrive in:
    the ``k`` with the smallest ``sample_key``. ``offer`` says whether a frame is in, and which frame
    (if any) it pushed out."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heaps: dict[str, list[tuple[int, str]]] = {}  # max-heap by negated key

    def offer(self, product_class: str, frame_id: str) -> tuple[bool, str | None]:
        heap = self._heaps.setdefault(product_class, [])
        key = sample_key(frame_id)
        if any(f == frame_id for _, f in heap):
            return False, None
        if len(heap) < self.k:
            heapq.heappush(heap, (-key, frame_id))
            return True, None
        if key >= -heap[0][0]:
            return False, None
        _, evicted = heapq.heapreplace(heap, (-key, frame_id))
        return True, evicted

    def counts(self) -> dict[str, int]:
        return {name: len(heap) for name, heap in sorted(self._heaps.items())}


@dataclass
class ExportSummary:
    """What an export wrote and what it could not (``labels.json``)."""

    exported_at: str
    feedback: int = 0  # judgements that count (latest per frame)
    bad_records: int = 0  # feedback records that did not decode
    defects: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> type folder -> frames
    goods: dict[str, int] = field(default_factory=dict)  # class -> confirmed normals from feedback
    masks: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # frames_store, defects, frames -> frames
    skipped: list[dict[str, str]] = field(default_factory=list)  # frame_id, reason
    normals: dict[str, int] = field(default_factory=dict)  # class -> sampled passes (staging set)

    def placed(self, placement: Placement, source: str, with_mask: bool) -> None:
        if placement.label == "good":
            self.goods[placement.product_class] = self.goods.get(placement.product_class, 0) + 1
        else:
            folder = placement.image.split("/")[2]
            by_type = self.defects.setdefault(placement.product_class, {})
            by_type[folder] = by_type.get(folder, 0) + 1
        self.masks += int(with_mask)
        self.sources[source] = self.sources.get(source, 0) + 1

    def skip(self, frame_id: str, reason: str) -> None:
        self.skipped.append({"frame_id": frame_id, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
