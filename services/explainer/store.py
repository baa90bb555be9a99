"""Step five of an event's path, and the first check of every event: the report store,
``<root>/<YYYY-MM-DD>/<line>/<station>/<frame_id>.{json,md,html}`` (and ``.overlay.jpg``).

The path is a pure function of the event (date from ``captured_at``), so a re-delivered event
finds its report without an index: that lookup is what makes the explainer idempotent. The JSON
file is written last and atomically; its presence means the report is complete. A ``.published``
marker records that the ``Report`` message went out, so a crash between the two is repaired by
publishing again, without a second VLM call.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from services.explainer.document import ReportDocument
from services.explainer.pictures import EventPictures
from services.explainer.render import render_html, render_json, render_markdown
from shared.errors import LineguardError
from shared.frames_store import write_atomically


class ReportStoreError(LineguardError):
    """The store holds something it cannot use at an event's path."""

    default_reason = "report_store"


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def safe_component(value: str) -> str:
    """A path component for an id from the wire: kept as is when harmless, otherwise reduced to
    safe characters plus a hash of the original (so distinct ids never collide)."""
    if _SAFE.match(value) and value not in {".", ".."}:
        return value
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value)[:60].lstrip(".") or "id"
    return f"{cleaned}-{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


@dataclass(frozen=True)
class StoredReport:
    document: ReportDocument
    json_path: Path
    published: bool


class ReportStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def directory(self, line_id: str, station_id: str, captured_at: int) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(captured_at / 1e9))
        return self.root / day / safe_component(line_id) / safe_component(station_id)

    def base_path(self, frame_id: str, line_id: str, station_id: str, captured_at: int) -> Path:
        return self.directory(line_id, station_id, captured_at) / safe_component(frame_id)

    def lookup(self, frame_id: str, line_id: str, station_id: str, captured_at: int) -> StoredReport | None:
        base = self.base_path(frame_id, line_id, station_id, captured_at)
        json_path = base.with_name(base.name + ".json")
        if not json_path.is_file():
            return None
        document = ReportDocument.from_dict(json.loads(json_path.read_text(encoding="utf-8")))
        if document.frame_id != frame_id:  # two ids sharing a sanitised name: not ours
            raise ReportStoreError(f"report store holds {document.frame_id!r} at the path of {frame_id!r}")
        published = base.with_name(base.name + ".published").exists()
        return StoredReport(document, json_path, published)

    def write(self, document: ReportDocument, pictures: EventPictures | None) -> Path:
        """The report's three files (the HTML embeds ``pictures``) and, with pictures, the heatmap
        overlay as ``<frame>.overlay.jpg`` for tickets and MES links; returns the JSON file's path."""
        base = self.base_path(document.frame_id, document.line_id, document.station_id, document.captured_at)
        base.parent.mkdir(parents=True, exist_ok=True)
        if pictures is not None:
            write_atomically(base.with_name(base.name + ".overlay.jpg"), pictures.overlay)
        write_atomically(base.with_name(base.name + ".html"), render_html(document, pictures).encode("utf-8"))
        write_atomically(base.with_name(base.name + ".md"), render_markdown(document).encode("utf-8"))
        json_path = base.with_name(base.name + ".json")
        write_atomically(json_path, render_json(document).encode("utf-8"))  # last: marks the report complete
        return json_path

    def mark_published(self, document: ReportDocument) -> None:
        base = self.base_path(document.frame_id, document.line_id, document.station_id, document.captured_at)
        write_atomically(base.with_name(base.name + ".published"), b"")

    def reports(self) -> list[Path]:
        """The JSON file of every complete report in the store."""
        return sorted(p for p in self.root.glob("*/*/*/*.json") if not p.name.startswith("."))

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def state_dir(self) -> Path:
        path = self.root / "_state"
        path.mkdir(parents=True, exist_ok=True)
        return path
