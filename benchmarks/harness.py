"""What several benchmarks do alike: time worker threads from the first start to the last finish,
print each measurement as it is made, and print the results (as one JSON line, or indented and
also written to ``--json`` when asked)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def timed_threads(work: Callable[[Any], None], shares: Sequence[Any]) -> float:
    """Seconds from starting one thread per share (``work(share)``) until the last has finished."""
    threads = [threading.Thread(target=work, args=(share,)) for share in shares]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def print_results(results: dict[str, Any], json_path: Path | None) -> None:
    """The results as indented JSON on stdout, and in ``json_path`` too when given."""
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if json_path:
        json_path.write_text(text + "\n")


def print_row(name: str, row: dict[str, Any]) -> None:
    """One measurement as it is made: its name and compact JSON, flushed (a long run shows progress)."""
    print(name, json.dumps(row), flush=True)


def print_report(report: dict[str, Any]) -> int:
    """The report as one JSON line, the last on stdout; returns the benchmark's exit status, 0."""
    print(json.dumps(report))
    return 0
