"""Shadow scoring's functional core: the comparison of a candidate's verdicts with the serving model's.

No Kafka and no event loop. ``Comparison`` is given the candidate's verdicts (the shadow run scored
them with the scorer's own decode, score and build-verdict code), the serving model's verdicts of the
same frames (joined on the frame id) and the operators' latest judgements, and builds the report:

* agreement: the share of frames both scored with the same decision, and which decisions would
  change (serving -> candidate), per class and frame by frame (the first ``changed_listed``);
* escapes and false rejects of each model on the frames operators labelled: an escape is a frame
  judged ``defect`` that the model passed; a false reject a frame judged ``good`` that it did not
  pass (``reject``, ``review`` and ``error`` all stop the part at the gate);
* added rejects: frames the serving model passed, the candidate would not, and no operator called
  defective: false rejects that labels cannot show yet;
* latency: the candidate's scoring time per frame here, and each model's end-to-end latency where
  it means something (the serving verdicts'; the candidate's only on live frames).

A serving verdict that was late carries the late policy's decision, not its model's, so it is not
compared (counted as ``serving_late``). Labelled frames the candidate was trained on can be left out
of the label counts (``excluded``): grading a model on its own training frames says nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.engine.config import Decision
from shared.messages.schemas import Feedback, Verdict

REPORT_FORMAT = 1  # the report's layout; `lineguard promote` reads only this one


def iso_time(ns: int) -> str:
    """A timestamp in ns as UTC ISO 8601 (milliseconds)."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stops_the_part(decision: str) -> bool:
    """Whether the gate rejects the part: anything but a pass (review and error included)."""
    return decision != Decision.PASS


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p95, p99 and max of ``values`` (nearest rank), rounded to 0.01; None when empty."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "count": len(ordered),
        "p50": round(rank(0.50), 2),
        "p95": round(rank(0.95), 2),
        "p99": round(rank(0.99), 2),
        "max": round(ordered[-1], 2),
    }


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class Scored:
    """What the comparison keeps of one verdict (never the image)."""

    frame_id: str
    product_class: str
    station_id: str
    decision: str
    score: float
    model_version: str
    late: bool
    captured_at: int
    latency_ms: float

    @classmethod
    def of(cls, verdict: Verdict) -> Scored:
        return cls(
            frame_id=verdict.frame_id,
            product_class=verdict.product_class,
            station_id=verdict.station_id,
            decision=verdict.decision,
            score=round(verdict.score, 4),
            model_version=verdict.model_version,
            late=verdict.late,
            captured_at=verdict.captured_at,
            latency_ms=verdict.latency_ms,
        )


@dataclass
class LabelledResults:
    """One model's results on the labelled frames."""

    escapes: int = 0
    false_rejects: int = 0
    decisions: Counter[str] = field(default_factory=Counter)  # over compared frames

    def judge(self, decision: str, label: str | None) -> None:
        self.decisions[decision] += 1
        if label == "defect" and not stops_the_part(decision):
            self.escapes += 1
        elif label == "good" and stops_the_part(decision):
            self.false_rejects += 1

    def to_dict(self, defects: int, goods: int) -> dict[str, Any]:
        return {
            "decisions": dict(sorted(self.decisions.items())),
            "escapes": self.escapes,
            "escape_rate": rate(self.escapes, defects),
            "false_rejects": self.false_rejects,
            "false_reject_rate": rate(self.false_rejects, goods),
        }


@dataclass(frozen=True)
class Candidate:
    """The model being tried: its version, manifest digest and directory (as given)."""

    model_version: str
    sha256: str
    path: str


class Comparison:
    """The candidate's verdicts, the serving model's of the same frames, and the scoring times."""

    def __init__(self, *, changed_listed: int = 200) -> None:
        self.changed_listed = changed_listed
        self.candidate: dict[str, Scored] = {}
        self.serving: dict[str, Scored] = {}
        self.scoring_ms: list[float] = []  # per frame, the candidate's decode + score + verdict time
        self.duplicates = 0  # a frame read twice (a re-read after a restart of the run)
        self.serving_duplicates = 0  # a second serving verdict for a frame: exactly-once was broken
        self.bad_frames = 0  # frames that did not decode (the scorer dead-lettered them too)

    def add_candidate(self, verdict: Verdict, scoring_ms: float) -> bool:
        if verdict.frame_id in self.candidate:
            self.duplicates += 1
            return False
        self.candidate[verdict.frame_id] = Scored.of(verdict)
        self.scoring_ms.append(scoring_ms)
        return True

    def wants(self, frame_id: str) -> bool:
        """Whether a serving verdict of this frame is still to be joined."""
        return frame_id in self.candidate and frame_id not in self.serving

    def add_serving(self, verdict: Verdict) -> bool:
        """Join a serving verdict; False for a frame the candidate did not score."""
        if verdict.frame_id not in self.candidate:
            return False
        if verdict.frame_id in self.serving:
            self.serving_duplicates += 1
            return False
        self.serving[verdict.frame_id] = Scored.of(verdict)
        return True

    @property
    def missing_serving(self) -> int:
        return len(self.candidate) - len(self.serving)

    def report(
        self,
        feedback: Mapping[str, Feedback],
        *,
        candidate: Candidate,
        window: Mapping[str, Any],
        run_id: str,
        generated_at_ns: int,
        excluded: Iterable[str] = (),
        live: bool = False,
    ) -> dict[str, Any]:
        """The comparison as the report's JSON-ready dict (``REPORT_FORMAT``)."""
        left_out = set(excluded)
        serving_out, candidate_out = LabelledResults(), LabelledResults()
        changes: Counter[str] = Counter()
        by_class: dict[str, dict[str, Any]] = {}
        changed: list[dict[str, Any]] = []
        compared = agreed = serving_late = added_rejects = 0
        defects = goods = excluded_labelled = 0
        versions: Counter[str] = Counter()
        serving_latency: list[float] = []
        for frame_id, mine in self.candidate.items():
            theirs = self.serving.get(frame_id)
            if theirs is None:
                continue
            if theirs.late:
                serving_late += 1
                continue
            compared += 1
            versions[theirs.model_version] += 1
            serving_latency.append(theirs.latency_ms)
            judged = feedback.get(frame_id)
            label = judged.label if judged is not None else None
            if label is not None and frame_id in left_out:
                excluded_labelled += 1
                label = None
            defects += label == "defect"
            goods += label == "good"
            serving_out.judge(theirs.decision, label)
            candidate_out.judge(mine.decision, label)
            row = by_class.setdefault(
                theirs.product_class, {"compared": 0, "agreed": 0, "changes": Counter()}
            )
            row["compared"] += 1
            if mine.decision == theirs.decision:
                agreed += 1
                row["agreed"] += 1
                continue
            change = f"{theirs.decision}->{mine.decision}"
            changes[change] += 1
            row["changes"][change] += 1
            if not stops_the_part(theirs.decision) and stops_the_part(mine.decision) and label != "defect":
                added_rejects += 1
            if len(changed) < self.changed_listed:
                changed.append(
                    {
                        "frame_id": frame_id,
                        "station_id": theirs.station_id,
                        "product_class": theirs.product_class,
                        "candidate_class": mine.product_class,
                        "captured_at": iso_time(theirs.captured_at),
                        "serving": theirs.decision,
                        "serving_score": theirs.score,
                        "candidate": mine.decision,
                        "candidate_score": mine.score,
                        "label": label or "",
                    }
                )
        candidate_latency = [s.latency_ms for s in self.candidate.values()] if live else []
        return {
            "report_format": REPORT_FORMAT,
            "run_id": run_id,
            "generated_at": iso_time(generated_at_ns),
            "candidate": {
                "model_version": candidate.model_version,
                "sha256": candidate.sha256,
                "path": candidate.path,
            },
            "serving_versions": dict(versions.most_common()),
            "window": dict(window),
            "frames": {
                "scored": len(self.candidate),
                "bad": self.bad_frames,
                "duplicates": self.duplicates,
                "without_serving_verdict": self.missing_serving,
                "serving_late": serving_late,
                "serving_duplicates": self.serving_duplicates,
                "compared": compared,
            },
            "agreement": rate(agreed, compared),
            "changes": dict(changes.most_common()),
            "changed_frames": changed,
            "changed_frames_total": sum(changes.values()),
            "by_class": {
                name: {
                    "compared": row["compared"],
                    "agreement": rate(row["agreed"], row["compared"]),
                    "changes": dict(row["changes"].most_common()),
                }
                for name, row in sorted(by_class.items())
            },
            "labels": {"defects": defects, "goods": goods, "excluded_trained": excluded_labelled},
            "outcomes": {
                "serving": serving_out.to_dict(defects, goods),
                "candidate": candidate_out.to_dict(defects, goods),
            },
            "added_rejects": {"count": added_rejects, "rate": rate(added_rejects, compared)},
            "latency_ms": {
                "candidate_scoring_per_frame": percentiles(self.scoring_ms),
                "candidate_end_to_end": percentiles(candidate_latency),
                "serving_end_to_end": percentiles(serving_latency),
            },
        }
