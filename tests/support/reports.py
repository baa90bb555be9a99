"""What the explainer's tests and benchmark feed it and build from it: a valid VLM answer, and
report documents built with fixed severity bands and creation time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from services.explainer.answer import parse_answer
from services.explainer.document import ReportDocument
from services.explainer.facts import EventFacts
from services.explainer.report import build_fallback_report, build_vlm_report
from tests.support.openai_server import ReceivedRequest, Reply

SEVERITY_BANDS = (0.6, 0.8)


def answer_json(
    *,
    location: str = "upper right",
    confidence: float = 0.9,
    anomalous: bool = True,
    severity: str = "moderate",
    defect_type: str = "scratch",
    **overrides: Any,
) -> str:
    """A valid VLM answer."""
    answer: dict[str, Any] = {
        "anomalous": anomalous,
        "confidence": confidence,
        "observations": "A thin bright mark near the upper right edge; the rest of the surface is uniform.",
        "defects": [
            {
                "type": defect_type,
                "location": location,
                "severity": severity,
                "description": "Linear mark about 30 px long.",
                "possible_cause": "Handling contact after forming.",
            }
        ]
        if anomalous
        else [],
        "assessment": "The part has a visible scratch and should not ship as is.",
        "root_cause": "Contact with a fixture edge.",
        "recommended_actions": ["Inspect the transfer fixture for burrs."],
    }
    answer.update(overrides)
    return json.dumps(answer)


def valid_answer(_: ReceivedRequest) -> Reply:
    """A ``FakeOpenAIServer`` responder that gives every request ``answer_json()``."""
    return Reply(content=answer_json())


def fallback_document(
    facts: EventFacts,
    reason: str = "no_endpoint",
    *,
    vocabulary: Sequence[str] = (),
    language: str = "en",
    egress: str = "full",
    created_at: int = 1,
    class_actions: Sequence[str] | None = None,
) -> ReportDocument:
    """The explainer's fallback report for ``facts`` (no VLM)."""
    return build_fallback_report(
        facts,
        reason=reason,
        vocabulary=list(vocabulary),
        severity_bands=SEVERITY_BANDS,
        language=language,
        created_at=created_at,
        egress=egress,
        class_actions=None if class_actions is None else list(class_actions),
    )


def vlm_document(
    facts: EventFacts,
    answer: str,
    shares: dict[str, float] | None = None,
    *,
    class_actions: Sequence[str] = (),
    language: str = "en",
) -> ReportDocument:
    """The explainer's report from the VLM answer text ``answer``, cross-checked with ``shares``."""
    return build_vlm_report(
        facts,
        parse_answer(answer),
        shares,
        language=language,
        vlm_model="m",
        created_at=1,
        egress="full",
        class_actions=list(class_actions),
        severity_bands=SEVERITY_BANDS,
    )
