from pathlib import Path

from services.demo.core import plc_agreement, report_files, where_to_look
from tests.support.messages import verdict


def station(passes: int, rejects: int, fail_safe: int = 0) -> dict[str, int]:
    return {"pass_count": passes, "reject_count": rejects, "fail_safe_count": fail_safe}


def test_plc_counters_agree_with_the_verdicts_pass_for_pass_and_reject_for_any_other_decision() -> None:
    verdicts = [verdict("a", "pass"), verdict("b", "reject"), verdict("c", "review"), verdict("d", "pass")]
    text, agrees = plc_agreement(station(2, 2), verdicts)
    assert agrees and "2 passes, 2 rejects" in text and "they agree" in text


def test_plc_counters_that_differ_from_the_verdicts_are_reported() -> None:
    verdicts = [verdict("a", "pass"), verdict("b", "reject")]
    text, agrees = plc_agreement(station(2, 0), verdicts)
    assert not agrees and "THEY DIFFER" in text
    _, again = plc_agreement(station(1, 1), [*verdicts, verdict("a", "reject")])  # a frame counts once
    assert again


def test_report_files_pairs_each_complete_report_with_its_overlay(tmp_path: Path) -> None:
    day = tmp_path / "2026-12-01" / "line-1" / "station-1"
    day.mkdir(parents=True)
    for stem in ("f-1", "f-2", "f-3"):
        (day / f"{stem}.html").write_text("<html></html>")
    (day / "f-1.json").write_text("{}")
    (day / "f-1.overlay.jpg").write_bytes(b"\xff\xd8")
    (day / "f-2.json").write_text("{}")  # no overlay (the frame did not decode)
    # f-3 has no JSON: not complete yet, not listed
    found = report_files(tmp_path)
    assert found == [(day / "f-1.html", day / "f-1.overlay.jpg"), (day / "f-2.html", None)]
    lines = where_to_look(found, shown=1)
    assert "2 " in lines[0] and lines[1].endswith("f-1.html") and lines[2].endswith("f-1.overlay.jpg")
    assert len(lines) == 3
    assert "none written" in where_to_look([])[0]
