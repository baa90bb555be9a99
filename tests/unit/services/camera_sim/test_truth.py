"""Ground truth round-trips and scores the line's verdicts and dead letters against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.camera_sim.core import DEFECT, NORMAL
from services.camera_sim.truth import (
    FRAME_ID_HEADER,
    TruthRecord,
    evaluate,
    format_report,
    read_truth,
    write_truth_line,
)
from tests.support.messages import dead_letter, verdict


def test_truth_round_trips_and_evaluation_counts_everything(tmp_path: Path) -> None:
    records = [
        TruthRecord("a", "c", "washer", NORMAL, None, None, "synthetic", 1),
        TruthRecord("b", "c", "washer", DEFECT, "spot", None, "synthetic", 2),
        TruthRecord("c", "c", "fabric", DEFECT, "scratch", None, "synthetic", 3),
        TruthRecord("d", "c", "fabric", NORMAL, None, None, "synthetic", 4),
        TruthRecord("e", "c", "fabric", NORMAL, None, "undecodable", "synthetic", 5),
    ]
    path = tmp_path / "truth.jsonl"
    with open(path, "w") as out:
        for record in records:
            write_truth_line(out, record)
    truth = read_truth(path)
    assert list(truth.values()) == records
    verdicts = [
        verdict("a", "pass", latency_ms=10.0),
        verdict("b", "reject", latency_ms=10.0),
        verdict("c", "pass", product="fabric", latency_ms=30.0),
        verdict("a", "pass", latency_ms=10.0),
        verdict("zzz", "pass", latency_ms=10.0),
    ]
    letter = dead_letter("malformed", detail="", key=None, value=b"x", headers=[(FRAME_ID_HEADER, b"e")])
    result = evaluate(truth, verdicts, [letter])
    assert (result.frames_sent, result.good_sent, result.bad_sent) == (5, 4, 1)
    assert result.duplicates == 1 and result.unexpected == 1
    assert result.missing == ["d"]
    assert result.dead_letters == {"malformed": 1} and result.dead_letters_matched == 1
    assert result.per_class["washer"].correct == 2
    assert result.per_class["fabric"].escaped == 1
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.latency_ms_p50 == pytest.approx(10.0)
    report = format_report(result)
    assert "washer" in report and "accuracy" in report


def test_bad_truth_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text('{"frame_id": "a"}\n')
    with pytest.raises(ValueError, match=r"truth\.jsonl:1"):
        read_truth(path)
