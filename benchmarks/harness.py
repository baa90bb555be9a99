"""What several benchmarks do alike: time worker threads from the first start to the last finish,
and print the results (also writing them to ``--json`` when asked)."""

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
