"""The shadow report on disk: ``report.json`` (what ``lineguard promote`` reads) and ``report.html``
(the same figures for a person), written whole or not at all; and reading a report back, bounded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.errors import ConfigError
from shared.frames_store import write_atomically

HERE = Path(__file__).resolve().parent
MAX_REPORT_BYTES = 64 << 20  # a report lists at most changed_frames_listed frames: far below this

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _better_or_worse(serving: float | None, candidate: float | None) -> str:
    """CSS class for a candidate's error rate next to the serving model's (lower is better)."""
    if serving is None or candidate is None or candidate == serving:
        return ""
    return "better" if candidate < serving else "worse"


def render_html(report: dict[str, Any]) -> str:
    template = _env.get_template("report.html")
    return template.render(r=report, pct=_percent, verdict_class=_better_or_worse)


def write_report(report: dict[str, Any], json_path: Path) -> tuple[Path, Path]:
    """Write ``json_path`` and the HTML beside it (same name, ``.html``); returns both paths."""
    html_path = json_path.with_suffix(".html")
    write_atomically(html_path, render_html(report).encode())
    write_atomically(json_path, (json.dumps(report, indent=2) + "\n").encode())
    return json_path, html_path


def read_report(path: Path) -> tuple[dict[str, Any], str]:
    """A report file's content and its sha256 (the bytes read are the bytes hashed and parsed)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"report {path} cannot be read ({exc.strerror})") from None
    if len(data) > MAX_REPORT_BYTES:
        raise ConfigError(f"report {path} is larger than {MAX_REPORT_BYTES >> 20} MiB: not a shadow report")
    try:
        report = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"report {path} is not JSON") from None
    if not isinstance(report, dict):
        raise ConfigError(f"report {path} is not a JSON object")
    return report, hashlib.sha256(data).hexdigest()
