"""The report as a record: what the report files and the ``Report`` message are made from.

``to_dict``/``from_dict`` are the JSON file's format (``REPORT_FORMAT_VERSION``); the store reads
old files back with ``from_dict`` to answer re-delivered events, so the format only ever grows.

Whose words are whose: ``summary``, ``evidence``, ``grade`` and ``recommended_actions`` are the
explainer's own, from the scorer's decision and fixed texts; everything the VLM wrote is kept in
the ``vlm_*`` fields and in the findings of a VLM report, and is only ever shown quoted as its words
(format 2; format 1 files read back with the ``vlm_*`` fields empty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.engine.config import Decision
from shared.messages.schemas import RegionMsg

REPORT_FORMAT_VERSION = 2
# The type of a finding nobody classified (a report from local signals: the anomaly model locates
# defects but does not name them).
UNCLASSIFIED = "unclassified"


@dataclass
class Finding:
    defect_type: str
    location: str  # position code
    severity: str
    description: str
    possible_cause: str
    location_agrees: bool | None  # None: taken from the heatmap itself, nothing to cross-check
    observed_locations: list[str] = field(default_factory=list)
    by_vlm: bool = False  # type, description and cause are the VLM's words


@dataclass
class ReportDocument:
    frame_id: str
    line_id: str
    station_id: str
    camera_id: str
    product_class: str
    decision: Decision
    score: float
    raw_score: float
    threshold: float
    model_version: str
    captured_at: int
    decided_at: int
    created_at: int
    language: str
    source: str  # "vlm" | "fallback"
    fallback_reason: str  # "" for VLM reports
    vlm_model: str
    egress: str
    regions: list[RegionMsg]
    region_positions: list[str]  # grid cell code of each region's centre
    anomalous: bool
    confidence: float | None  # None for fallback reports
    summary: str
    findings: list[Finding]
    evidence: list[str]
    root_cause: str
    recommended_actions: list[str]
    grade: str
    location_disagreement: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    vlm_calls: int = 0
    repaired: bool = False
    follow_up: bool = False
    vlm_anomalous: bool | None = None  # the VLM's own verdict (None: no VLM answer)
    vlm_disagrees: bool = False  # the VLM found no defect where the scorer decided reject/review
    vlm_assessment: str = ""
    vlm_observations: str = ""
    vlm_root_cause: str = ""
    vlm_suggestions: list[str] = field(default_factory=list)  # its recommended actions, never ours
    format_version: int = REPORT_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON record. Each region is written with its grid cell beside its box (format 1)."""
        data = asdict(self)
        positions = data.pop("region_positions")
        data["regions"] = [
            {**region, "position": position}
            for region, position in zip(data["regions"], positions, strict=True)
        ]
        return data

    def log_fields(self) -> dict[str, Any]:
        """What a log line says of a written report: which frame, who wrote it (and why a fallback),
        its grade and what it cost."""
        return {
            "frame_id": self.frame_id,
            "source": self.source,
            "grade": self.grade,
            "fallback_reason": self.fallback_reason,
            "cost_usd": round(self.cost_usd, 6),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportDocument:
        values = dict(data)
        regions = [dict(region) for region in values["regions"]]
        values["region_positions"] = [region.pop("position") for region in regions]
        values["regions"] = [RegionMsg(**region) for region in regions]
        values["decision"] = Decision(values["decision"])
        values["findings"] = [Finding(**f) for f in values["findings"]]
        return cls(**values)
