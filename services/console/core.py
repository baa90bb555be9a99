"""The console's memory of the line, and operator feedback checked before it is sent.

Plain classes, no Kafka, no web framework: ``ConsoleState`` keeps bounded windows of what the
service reads (verdicts per station, rejects and reviews with their pictures, reports, model
announcements, feedback) and numbers every change so that live pages can follow; ``build_feedback``
turns a submitted form into a ``Feedback`` message or refuses it with a reason an operator can read.
Every message here was decoded (and so checked) by the codec before it arrives.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from shared.engine.config import DECISIONS, UNKNOWN
from shared.errors import LineguardError
from shared.limits import ID_MAX, TEXT_MAX
from shared.messages.schemas import (
    FEEDBACK_LABELS,
    MAX_FEEDBACK_REGIONS,
    DefectEvent,
    Feedback,
    ModelAnnouncement,
    ModelHistoryEntry,
    RegionMsg,
    Report,
    Verdict,
    frame_keys,
)

OTHER_CLASSES = "(other)"  # where classes past ``classes_max`` are counted
OPERATOR_NAME_MAX = 64


class FeedbackRefused(LineguardError):
    """A submitted judgement that cannot be sent; the message says why, for the operator."""

    default_reason = "feedback_refused"


V = TypeVar("V")


def _put_newest(held: OrderedDict[str, V], key: str, value: V, cap: int) -> None:
    """``value`` under ``key`` as the newest entry; the oldest ones dropped beyond ``cap``."""
    held.pop(key, None)
    held[key] = value
    while len(held) > cap:
        held.popitem(last=False)


@dataclass(frozen=True)
class StateLimits:
    stations_max: int = 64
    verdicts_per_station: int = 200
    classes_max: int = 256
    evidence_max: int = 200
    evidence_max_bytes: int = 256 << 20
    reports_max: int = 2000
    feedback_max: int = 10_000
    models_history: int = 100
    changes_kept: int = 1000  # live pages further behind than this reload


@dataclass(frozen=True)
class Change:
    """One numbered change, for live pages: ``kind`` is verdict, evidence, report, model (on ``models``),
    history (on ``model-history``) or feedback."""

    seq: int
    kind: str
    data: dict[str, Any]


def announcement_key(announcement: ModelAnnouncement) -> str:
    """One announcement's identity, the same on ``models`` and ``model-history``."""
    return f"{announcement.announced_at}-{announcement.sha256[:16]}-{announcement.model_version}"


def _event_bytes(event: DefectEvent) -> int:
    # + the verdict and bookkeeping; a claim-checked frame keeps only its reference
    return len(event.image or b"") + len(event.anomaly_map_png) + 4096


def verdict_row(verdict: Verdict, *, has_evidence: bool, feedback: str | None) -> dict[str, Any]:
    """What a page shows of a verdict (and what a live page receives)."""
    return {
        "frame_id": verdict.frame_id,
        "station_id": verdict.station_id,
        "line_id": verdict.line_id,
        "camera_id": verdict.camera_id,
        "product_class": verdict.product_class,
        "decision": verdict.decision,
        "score": round(verdict.score, 3),
        "late": verdict.late,
        "reason": verdict.reason,
        "model_version": verdict.model_version,
        "captured_at": verdict.captured_at,
        "time": time.strftime("%H:%M:%S", time.localtime(verdict.captured_at / 1e9)),
        "has_evidence": has_evidence,
        "feedback": feedback or "",
    }


class ConsoleState:
    """Bounded windows over the topics the console reads. Not thread-safe: one event loop owns it."""

    def __init__(self, limits: StateLimits | None = None) -> None:
        self.limits = limits or StateLimits()
        self._stations: OrderedDict[str, deque[Verdict]] = OrderedDict()  # least recently active first
        self._verdicts: dict[str, Verdict] = {}  # frame id -> verdict, for those in a station window
        self._counts: dict[str, Counter[str]] = {}
        self._evidence: OrderedDict[str, DefectEvent] = OrderedDict()
        self._evidence_bytes = 0
        self._reports: OrderedDict[str, Report] = OrderedDict()
        self._feedback: OrderedDict[str, Feedback] = OrderedDict()
        self._models: deque[ModelAnnouncement] = deque(maxlen=self.limits.models_history)
        self._history: OrderedDict[str, ModelHistoryEntry] = OrderedDict()  # by announcement_key
        self._changes: deque[Change] = deque(maxlen=self.limits.changes_kept)
        self._seq = 0

    # ---- what comes in ----------------------------------------------------------------------

    def add_verdict(self, verdict: Verdict) -> bool:
        """Count and keep a verdict; False for a frame already in the window (a re-read)."""
        if verdict.frame_id in self._verdicts:
            return False
        window = self._stations.get(verdict.station_id)
        if window is None:
            if len(self._stations) >= self.limits.stations_max:
                _, evicted = self._stations.popitem(last=False)
                for old in evicted:
                    self._forget_verdict(old)
            window = deque()
            self._stations[verdict.station_id] = window
        self._stations.move_to_end(verdict.station_id)
        if len(window) >= self.limits.verdicts_per_station:
            self._forget_verdict(window.popleft())
        window.append(verdict)
        self._verdicts[verdict.frame_id] = verdict
        self._count(verdict)
        self._record("verdict", self.row(verdict))
        return True

    def add_evidence(self, event: DefectEvent) -> bool:
        """Keep a reject or review with its image and map (oldest dropped past the limits); False
        when one event alone is over the byte limit or the frame is held already."""
        frame_id = event.verdict.frame_id
        size = _event_bytes(event)
        if size > self.limits.evidence_max_bytes or frame_id in self._evidence:
            return False
        while self._evidence and (
            len(self._evidence) >= self.limits.evidence_max
            or self._evidence_bytes + size > self.limits.evidence_max_bytes
        ):
            _, old = self._evidence.popitem(last=False)
            self._evidence_bytes -= _event_bytes(old)
        self._evidence[frame_id] = event
        self._evidence_bytes += size
        self._record("evidence", self.row(event.verdict))
        return True

    def add_report(self, report: Report) -> None:
        _put_newest(self._reports, report.frame_id, report, self.limits.reports_max)
        self._record("report", {"frame_id": report.frame_id, "grade": report.grade, "source": report.source})

    def add_announcement(self, announcement: ModelAnnouncement) -> None:
        """An announcement on ``models``; the newest one read is the serving model (scorers take
        only announcements newer than the last they took)."""
        if announcement in self._models:
            return
        serving = self.serving_model
        self._models.append(announcement)
        newest = serving is None or announcement.announced_at >= serving.announced_at
        self._record("model" if newest else "history", self.model_row(announcement))

    def add_history(self, entry: ModelHistoryEntry) -> bool:
        """An entry of the announcement history (``model-history``): who announced what, how and why.
        False for one held already."""
        key = announcement_key(entry.announcement)
        if key in self._history:
            return False
        _put_newest(self._history, key, entry, self.limits.models_history)
        self._record("history", self.model_row(entry.announcement))
        return True

    def add_feedback(self, feedback: Feedback) -> None:
        """The latest judgement per frame (the topic is compacted by frame id the same way)."""
        _put_newest(self._feedback, feedback.frame_id, feedback, self.limits.feedback_max)
        self._record("feedback", {"frame_id": feedback.frame_id, "label": feedback.label})

    # ---- what pages read --------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    def changes_since(self, seq: int) -> list[Change] | None:
        """Changes after ``seq``, oldest first; None when some of them are no longer kept."""
        if seq >= self._seq:
            return []
        if not self._changes or self._changes[0].seq > seq + 1:
            return None
        return [change for change in self._changes if change.seq > seq]

    def verdict(self, frame_id: str) -> Verdict | None:
        evidence = self._evidence.get(frame_id)
        return evidence.verdict if evidence is not None else self._verdicts.get(frame_id)

    def evidence(self, frame_id: str) -> DefectEvent | None:
        return self._evidence.get(frame_id)

    def report(self, frame_id: str) -> Report | None:
        return self._reports.get(frame_id)

    def feedback(self, frame_id: str) -> Feedback | None:
        return self._feedback.get(frame_id)

    def stations(self) -> list[tuple[str, list[Verdict]]]:
        """Each station's window, newest verdict first; stations by name."""
        return [(name, list(reversed(window))) for name, window in sorted(self._stations.items())]

    def recent_evidence(self, limit: int) -> list[DefectEvent]:
        """The newest rejects and reviews held with their pictures, newest first."""
        return list(reversed(self._evidence.values()))[:limit]

    def counts(self) -> dict[str, dict[str, int]]:
        """Class -> decision -> verdicts counted since the console started reading; by class name."""
        return {
            name: {d: counter.get(d, 0) for d in DECISIONS} for name, counter in sorted(self._counts.items())
        }

    @property
    def serving_model(self) -> ModelAnnouncement | None:
        """The newest announcement read from ``models``: what scorers serve once they have verified it."""
        return max(self._models, key=lambda a: a.announced_at, default=None)

    def model_history(self) -> list[ModelAnnouncement]:
        """Announcements read, from the history and the ``models`` topic (each once), newest first."""
        merged = {announcement_key(e.announcement): e.announcement for e in self._history.values()}
        for announcement in self._models:
            merged.setdefault(announcement_key(announcement), announcement)
        newest = sorted(merged.values(), key=lambda a: a.announced_at, reverse=True)
        return newest[: self.limits.models_history]

    def row(self, verdict: Verdict) -> dict[str, Any]:
        judged = self._feedback.get(verdict.frame_id)
        return verdict_row(
            verdict,
            has_evidence=verdict.frame_id in self._evidence,
            feedback=judged.label if judged else None,
        )

    def model_row(self, announcement: ModelAnnouncement) -> dict[str, Any]:
        """What a page shows of an announcement, with its history entry's account when read."""
        entry = self._history.get(announcement_key(announcement))
        return {
            "key": announcement_key(announcement),
            "model_version": announcement.model_version,
            "path": announcement.path,
            "announced_at": time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(announcement.announced_at / 1e9)
            ),
            "sha256": announcement.sha256[:12],
            "signed_by": announcement.key_id or "",
            "action": entry.action if entry else "",
            "actor": entry.actor if entry else "",
            "reason": entry.reason if entry else "",
            "previous_version": entry.previous_version if entry else "",
        }

    # ---- internals --------------------------------------------------------------------------

    def _forget_verdict(self, verdict: Verdict) -> None:
        if self._verdicts.get(verdict.frame_id) is verdict:
            del self._verdicts[verdict.frame_id]

    def _count(self, verdict: Verdict) -> None:
        name = verdict.product_class
        if name not in self._counts and len(self._counts) >= self.limits.classes_max:
            name = OTHER_CLASSES
        self._counts.setdefault(name, Counter())[verdict.decision] += 1

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        self._seq += 1
        self._changes.append(Change(self._seq, kind, data))


# ---- feedback -------------------------------------------------------------------------------


def defect_types(vocabulary: Mapping[str, list[str]], default: list[str], product_class: str) -> list[str]:
    """The defect types an operator may choose for a class: the explainer's vocabulary for it, else
    the default vocabulary (so reports and labels use the same words)."""
    return list(vocabulary.get(product_class) or default)


def clean_operator_name(name: str) -> str:
    """An operator name as recorded: trimmed, 1-64 printable characters; ``FeedbackRefused`` else."""
    name = name.strip()
    if not 0 < len(name) <= OPERATOR_NAME_MAX or not _printable(name):
        raise FeedbackRefused(f"a name is 1 to {OPERATOR_NAME_MAX} printable characters")
    return name


def _printable(text: str) -> bool:
    return all(unicodedata.category(c)[0] != "C" for c in text)


@dataclass(frozen=True)
class FeedbackForm:
    """What the frame page posts: the label, a defect type, the indexes of scorer regions chosen,
    drawn boxes as ``x,y,w,h;...`` in frame pixels, and a comment."""

    label: str
    defect_type: str = ""
    scorer_regions: tuple[str, ...] = ()
    drawn_regions: str = ""
    comment: str = ""

    @classmethod
    def from_fields(cls, fields: Mapping[str, list[str]]) -> FeedbackForm:
        def one(name: str) -> str:
            values = fields.get(name) or [""]
            if len(values) > 1:
                raise FeedbackRefused(f"{name} given more than once")
            return values[0]

        return cls(
            label=one("label"),
            defect_type=one("defect_type"),
            scorer_regions=tuple(fields.get("scorer_region") or ()),
            drawn_regions=one("drawn_regions"),
            comment=one("comment"),
        )


def build_feedback(
    form: FeedbackForm,
    verdict: Verdict,
    frame_size: tuple[int, int] | None,
    types: Iterable[str],
    *,
    operator: str,
    authenticated_by: str,
    submitted_at: int,
) -> Feedback:
    """The ``Feedback`` message for ``verdict`` from ``form``, or ``FeedbackRefused``.

    ``frame_size`` (width, height) is known when the console holds the frame's image; regions need
    it. Chosen regions are the verdict's own; drawn ones must lie inside the frame.
    """
    if form.label not in FEEDBACK_LABELS:
        raise FeedbackRefused(f"the label must be one of {', '.join(FEEDBACK_LABELS)}")
    allowed = list(types)
    if form.defect_type and form.defect_type not in allowed:
        raise FeedbackRefused(f"{form.defect_type[:80]!r} is not a defect type of {verdict.product_class}")
    regions = _chosen_regions(form.scorer_regions, verdict) + _drawn_regions(form.drawn_regions, frame_size)
    if form.label == "good" and (form.defect_type or regions):
        raise FeedbackRefused("a good frame has no defect type or region")
    if len(regions) > MAX_FEEDBACK_REGIONS:
        raise FeedbackRefused(f"at most {MAX_FEEDBACK_REGIONS} regions")
    if regions and frame_size is None:
        raise FeedbackRefused("regions need the frame's image, which the console does not hold")
    comment = form.comment.strip()
    if len(comment) > TEXT_MAX or not _printable(comment.replace("\n", " ").replace("\r", " ")):
        raise FeedbackRefused(f"a comment is at most {TEXT_MAX} printable characters")
    width, height = frame_size if frame_size is not None else (None, None)
    return Feedback(
        **frame_keys(verdict),
        product_class=verdict.product_class or UNKNOWN,
        label=form.label,
        defect_type=form.defect_type[:ID_MAX],
        regions=regions,
        width=width,
        height=height,
        decision=verdict.decision,
        score=verdict.score if math.isfinite(verdict.score) else 0.0,
        model_version=verdict.model_version,
        captured_at=verdict.captured_at,
        operator=clean_operator_name(operator),
        authenticated_by=authenticated_by,
        submitted_at=submitted_at,
        comment=comment,
    )


def _chosen_regions(indexes: tuple[str, ...], verdict: Verdict) -> list[RegionMsg]:
    chosen: list[RegionMsg] = []
    seen: set[int] = set()
    for text in indexes:
        if not text.isdigit() or int(text) >= len(verdict.regions):
            raise FeedbackRefused(f"no scorer region {text[:12]!r} on this frame")
        index = int(text)
        if index not in seen:
            seen.add(index)
            chosen.append(verdict.regions[index])
    return chosen


def _drawn_regions(text: str, frame_size: tuple[int, int] | None) -> list[RegionMsg]:
    boxes = [part for part in text.replace(" ", "").split(";") if part]
    if not boxes:
        return []
    if frame_size is None:
        raise FeedbackRefused("regions need the frame's image, which the console does not hold")
    if len(boxes) > MAX_FEEDBACK_REGIONS:
        raise FeedbackRefused(f"at most {MAX_FEEDBACK_REGIONS} regions")
    width, height = frame_size
    regions = []
    for box in boxes:
        parts = box.split(",")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 6 for p in parts):
            raise FeedbackRefused("a drawn region is x,y,width,height in whole pixels")
        x, y, w, h = (int(p) for p in parts)
        if w < 1 or h < 1 or x + w > width or y + h > height:
            raise FeedbackRefused(f"drawn region {box} is not inside the {width}x{height} frame")
        regions.append(
            RegionMsg(x=x, y=y, width=w, height=h, score=0.0, area_fraction=(w * h) / (width * height))
        )
    return regions


def feedback_summary(feedback: Feedback) -> dict[str, Any]:
    """What a page shows of a judgement."""
    data = asdict(feedback)
    data["submitted"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(feedback.submitted_at / 1e9))
    return data
