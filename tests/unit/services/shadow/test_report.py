"""The report files: JSON for `promote`, HTML for people (escaped), read back bounded and hashed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from services.shadow import report as report_files
from services.shadow.core import Candidate, Comparison
from shared.errors import ConfigError
from tests.support.feedback import judgement
from tests.support.messages import T0, verdict


def _report() -> dict[str, Any]:
    comparison = Comparison()
    comparison.add_candidate(verdict("<script>x</script>", "reject", model_version="m-new"), 3.0)
    comparison.add_serving(verdict("<script>x</script>", "pass", model_version="m-old"))
    comparison.add_candidate(verdict("f2", "pass", model_version="m-new"), 3.0)
    comparison.add_serving(verdict("f2", "pass", model_version="m-old"))
    feedback = {"<script>x</script>": judgement(verdict("<script>x</script>"), "defect")}
    return comparison.report(
        feedback,
        candidate=Candidate("m-new", "ab" * 32, "models/<b>new</b>"),
        window={"mode": "replay", "start": "offset 0", "until": ""},
        run_id="r1",
        generated_at_ns=T0,
    )


def test_json_and_html_are_written_and_read_back(tmp_path: Path) -> None:
    report = _report()
    json_path, html_path = report_files.write_report(report, tmp_path / "run" / "report.json")
    assert html_path == tmp_path / "run" / "report.html"
    read, digest = report_files.read_report(json_path)
    assert read == report
    assert digest == hashlib.sha256(json_path.read_bytes()).hexdigest()
    html = html_path.read_text()
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "&lt;b&gt;new&lt;/b&gt;" in html
    assert "<td>pass-&gt;reject</td>" in html  # the decision that would change
    assert "100.0 %" in html and "0.0 %" in html  # escape rates, serving and candidate
    assert 'class="num better"' in html


def test_read_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    for content in (b"not json", b"[1, 2]", b"\xff\xfe"):
        path.write_bytes(content)
        with pytest.raises(ConfigError):
            report_files.read_report(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        report_files.read_report(tmp_path / "missing.json")


def test_read_refuses_an_oversized_file_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_files, "MAX_REPORT_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"x": "y" * 200}))
    with pytest.raises(ConfigError, match="larger than"):
        report_files.read_report(path)
