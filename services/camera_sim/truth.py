"""Ground truth of a simulator run (JSON lines) and the evaluation of verdicts against it.

One line per frame sent: ``{"frame_id", "camera_id", "product", "label", "defect_type", "bad",
"source"}``. The demo and the pipeline benchmark read it back to score the line's decisions.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from services.camera_sim.core import DEFECT, NORMAL, PlannedFrame, SampleSpec
from shared.engine.config import Decision
from shared.messages.schemas import DeadLetter, Verdict

FRAME_ID_HEADER = "lineguard-frame-id"  # set on every record the simulator sends, good or bad


@dataclass(frozen=True)
class TruthRecord:
    frame_id: str
    camera_id: str
    product: str
    label: str  # NORMAL | DEFECT
    defect_type: str | None
    bad: str | None  # bad-frame kind, or None
    source: str  # dataset file path or "synthetic"
    captured_at: int  # ns

    @classmethod
    def for_frame(cls, planned: PlannedFrame, sample: SampleSpec, captured_at: int) -> TruthRecord:
        """What was sent for one planned frame of ``sample``."""
        return cls(
            frame_id=planned.frame_id,
            camera_id=planned.camera_id,
            product=sample.product,
            label=sample.label,
            defect_type=sample.defect_type,
            bad=planned.bad_kind,
            source=str(sample.path) if sample.path else "synthetic",
            captured_at=captured_at,
        )


def write_truth_line(out: IO[str], record: TruthRecord) -> None:
    out.write(json.dumps(asdict(record), sort_keys=True) + "\n")


def read_truth(path: Path) -> dict[str, TruthRecord]:
    records: dict[str, TruthRecord] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = TruthRecord(**json.loads(line))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not a ground-truth record ({exc})") from None
            records[record.frame_id] = record
    return records


def dead_letter_frame_id(letter: DeadLetter) -> str | None:
    """The simulator's frame id of a dead letter, from the original record's headers."""
    for key, value in letter.original_headers:
        if key == FRAME_ID_HEADER and value is not None:
            return bytes(value).decode("utf-8", "replace")
    return None


@dataclass
class ClassScore:
    """Decisions for one product class, by true label."""

    confusion: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.confusion.values())

    @property
    def correct(self) -> int:
        return self.confusion[NORMAL][Decision.PASS] + self.confusion[DEFECT][Decision.REJECT]

    @property
    def escaped(self) -> int:
        """Defective parts that were passed: the costly error."""
        return self.confusion[DEFECT][Decision.PASS]


@dataclass
class Evaluation:
    frames_sent: int
    good_sent: int
    bad_sent: int
    verdicts: int
    duplicates: int
    missing: list[str]
    unexpected: int  # verdicts for frames not in the ground truth, or for bad frames
    decisions: Counter[tuple[str, str]]  # (product_class, decision) -> count
    dead_letters: Counter[str]  # reason -> count
    dead_letters_matched: int  # dead letters whose frame id is a bad frame of the truth
    per_class: dict[str, ClassScore]
    late: int
    latency_ms_p50: float
    latency_ms_p99: float
    throughput_fps: float

    @property
    def accuracy(self) -> float:
        total = sum(s.total for s in self.per_class.values())
        return sum(s.correct for s in self.per_class.values()) / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames_sent": self.frames_sent,
            "good_sent": self.good_sent,
            "bad_sent": self.bad_sent,
            "verdicts": self.verdicts,
            "duplicates": self.duplicates,
            "missing": len(self.missing),
            "unexpected": self.unexpected,
            "decisions": {f"{c}/{d}": n for (c, d), n in sorted(self.decisions.items())},
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "accuracy": round(self.accuracy, 4),
            "late": self.late,
            "latency_ms_p50": round(self.latency_ms_p50, 2),
            "latency_ms_p99": round(self.latency_ms_p99, 2),
            "throughput_fps": round(self.throughput_fps, 2),
        }


def evaluate(
    truth: dict[str, TruthRecord], verdicts: Iterable[Verdict], dead_letters: Iterable[DeadLetter] = ()
) -> Evaluation:
    """Compare the line's output with what was sent. The truth's product is the expected class."""
    seen: Counter[str] = Counter()
    decisions: Counter[tuple[str, str]] = Counter()
    per_class: dict[str, ClassScore] = defaultdict(ClassScore)
    latencies: list[float] = []
    first_capture, last_decision = None, None
    unexpected = late = 0
    for verdict in verdicts:
        seen[verdict.frame_id] += 1
        if seen[verdict.frame_id] > 1:
            continue
        expected = truth.get(verdict.frame_id)
        if expected is None or expected.bad is not None:
            unexpected += 1
            continue
        decisions[(verdict.product_class, verdict.decision)] += 1
        per_class[expected.product].confusion[expected.label][verdict.decision] += 1
        latencies.append(verdict.latency_ms)
        late += verdict.late
        first_capture = min(first_capture or verdict.captured_at, verdict.captured_at)
        last_decision = max(last_decision or verdict.decided_at, verdict.decided_at)
    letters: Counter[str] = Counter()
    matched = 0
    for letter in dead_letters:
        letters[letter.reason] += 1
        frame_id = dead_letter_frame_id(letter)
        record = truth.get(frame_id) if frame_id else None
        matched += record is not None and record.bad is not None
    good = [r.frame_id for r in truth.values() if r.bad is None]
    span_s = (last_decision - first_capture) / 1e9 if first_capture and last_decision else 0.0
    scored = len(latencies)
    return Evaluation(
        frames_sent=len(truth),
        good_sent=len(good),
        bad_sent=len(truth) - len(good),
        verdicts=sum(seen.values()),
        duplicates=sum(n - 1 for n in seen.values() if n > 1),
        missing=[f for f in good if f not in seen],
        unexpected=unexpected,
        decisions=decisions,
        dead_letters=letters,
        dead_letters_matched=matched,
        per_class=dict(per_class),
        late=late,
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies else 0.0,
        latency_ms_p99=float(np.percentile(latencies, 99)) if latencies else 0.0,
        throughput_fps=scored / span_s if span_s > 0 else 0.0,
    )


def format_report(evaluation: Evaluation) -> str:
    """A human-readable summary for the demo."""
    e = evaluation
    lines = [
        f"frames sent        {e.frames_sent} ({e.good_sent} good, {e.bad_sent} bad on purpose)",
        f"verdicts           {e.verdicts} (missing {len(e.missing)}, duplicates {e.duplicates}, "
        f"unexpected {e.unexpected}, late {e.late})",
        "dead letters       "
        + (", ".join(f"{r}: {n}" for r, n in sorted(e.dead_letters.items())) or "none")
        + f" ({e.dead_letters_matched} matched to injected bad frames)",
        "decisions by class " + ", ".join(f"{c}/{d}: {n}" for (c, d), n in sorted(e.decisions.items())),
        "",
        f"{'class':<14}{'frames':>7}{'correct':>9}{'accuracy':>10}   normal->pass/reject/review   "
        "defect->reject/review/pass",
    ]
    for product, score in sorted(e.per_class.items()):
        n, d = score.confusion[NORMAL], score.confusion[DEFECT]
        accuracy = score.correct / score.total if score.total else 0.0
        lines.append(
            f"{product:<14}{score.total:>7}{score.correct:>9}{accuracy:>10.1%}   "
            f"{n[Decision.PASS]:>6}/{n[Decision.REJECT]}/{n[Decision.REVIEW]:<18}"
            f"{d[Decision.REJECT]:>6}/{d[Decision.REVIEW]}/{d[Decision.PASS]}"
        )
    lines += [
        "",
        f"accuracy           {e.accuracy:.1%} (normal passed + defect rejected, over scored good frames)",
        f"throughput         {e.throughput_fps:.1f} frames/s (first capture to last verdict)",
        f"end-to-end latency p50 {e.latency_ms_p50:.1f} ms, p99 {e.latency_ms_p99:.1f} ms"
        " (capture to verdict)",
    ]
    return "\n".join(lines)
