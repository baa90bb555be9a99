"""The benchmarks' shared harness: threads timed from first start to last finish, results printed
and written alike."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from benchmarks.harness import print_report, print_results, print_row, timed_threads


def test_timed_threads_runs_every_share_at_once_and_times_the_slowest() -> None:
    seen: list[int] = []
    lock = threading.Lock()
    all_started = threading.Barrier(3)  # passed only if the three run at the same time

    def work(share: int) -> None:
        all_started.wait(timeout=10)
        time.sleep(0.05 * share)
        with lock:
            seen.append(share)

    elapsed = timed_threads(work, [1, 3, 2])
    assert sorted(seen) == [1, 2, 3]  # every share ran, and timed_threads waited for the last
    assert elapsed >= 0.15


def test_print_results_prints_and_writes_the_same_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = {"fps": 12.5, "model": tmp_path / "model"}
    print_results(results, tmp_path / "out.json")
    printed = capsys.readouterr().out
    assert json.loads(printed) == {"fps": 12.5, "model": str(tmp_path / "model")}
    assert (tmp_path / "out.json").read_text() == printed
    print_results(results, None)
    assert json.loads(capsys.readouterr().out)["fps"] == 12.5


def test_print_row_names_one_compact_json_measurement(capsys: pytest.CaptureFixture[str]) -> None:
    print_row("washer jpeg", {"ms": 1.5, "n": 2})
    assert capsys.readouterr().out == 'washer jpeg {"ms": 1.5, "n": 2}\n'


def test_print_report_prints_one_json_line_and_gives_the_exit_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert print_report({"machine": "x86_64", "results": {"a": 1}}) == 0
    assert capsys.readouterr().out == '{"machine": "x86_64", "results": {"a": 1}}\n'
