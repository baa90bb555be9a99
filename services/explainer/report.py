"""Step four of an event's path: the report (``document.ReportDocument``), written either from the
VLM's answer or from local signals alone (fallback).

Everything here is deterministic given its inputs: the quality grade and template actions come
from fixed rules so that two reports with the same findings always get the same grade.
"""

from __future__ import annotations

from typing import Any

from services.explainer import i18n
from services.explainer.answer import VlmAnswer
from services.explainer.document import Finding, ReportDocument
from services.explainer.facts import EventFacts
from services.explainer.geometry import LocationCheck, check_location, elongation
from shared.messages.schemas import RegionMsg

SEVERITY_ORDER = {"minor": 0, "moderate": 1, "severe": 2}
LARGE_AREA = 0.05  # a region covering this share of the image counts as extensive

# Words that hint at a defect's shape, to pick candidate types from a class's vocabulary.
_SHAPE_FAMILIES = {
    "elongated": ("scratch", "crack", "fray", "line", "break", "cut", "tear", "scuff"),
    "compact": ("spot", "stain", "hole", "blowhole", "dent", "dot", "particle", "contamination", "pit"),
    "large": ("missing", "deformation", "uneven", "discolo", "break", "warp", "contamination"),
}


def severity_from_score(score: float, bands: tuple[float, float]) -> str:
    """Severity from the normalised score's band (0.5 is the threshold)."""
    moderate_from, severe_from = bands
    if score >= severe_from:
        return "severe"
    if score >= moderate_from:
        return "moderate"
    return "minor"


def quality_grade(anomalous: bool, severities: list[str], score: float, max_area: float) -> str:
    """A-F: A no defect, B flagged but not confirmed, C minor, D moderate, E severe,
    F severe and extensive (two severe findings, or a region over ``LARGE_AREA`` of the image)."""
    if not anomalous or not severities:
        return "A" if score < 0.5 else "B"
    worst = max(severities, key=lambda s: SEVERITY_ORDER.get(s, 0))
    if worst == "minor":
        return "C"
    if worst == "moderate":
        return "D"
    severe_count = sum(1 for s in severities if s == "severe")
    return "F" if severe_count >= 2 or max_area >= LARGE_AREA else "E"


def shape_of(region: RegionMsg) -> str:
    if region.area_fraction >= LARGE_AREA:
        return "large"
    return "elongated" if elongation(region.width, region.height) >= 3.0 else "compact"


def candidate_types(shape: str, vocabulary: list[str]) -> list[str]:
    keys = _SHAPE_FAMILIES[shape]
    return [term for term in vocabulary if any(key in term.lower() for key in keys)]


def _region_lines(facts: EventFacts, language: str) -> list[str]:
    return [
        i18n.text(
            language,
            "region",
            index=i + 1,
            position=i18n.position_words(language, position),
            share=f"{r.area_fraction:.1%}",
            score=f"{r.score:.2f}",
        )
        for i, (r, position) in enumerate(zip(facts.verdict.regions, facts.positions, strict=True))
    ]


def _grade_actions(language: str, grade: str) -> list[str]:
    return list(i18n.GRADE_ACTIONS[language][grade])


def _common(facts: EventFacts, language: str, created_at: int, egress: str) -> dict[str, Any]:
    v = facts.verdict
    return {
        "frame_id": v.frame_id,
        "line_id": v.line_id,
        "station_id": v.station_id,
        "camera_id": v.camera_id,
        "product_class": v.product_class,
        "decision": facts.decision,
        "score": v.score,
        "raw_score": v.raw_score,
        "threshold": v.threshold,
        "model_version": v.model_version,
        "captured_at": v.captured_at,
        "decided_at": v.decided_at,
        "created_at": created_at,
        "language": language,
        "egress": egress,
        "regions": list(v.regions),
        "region_positions": list(facts.positions),
    }


def build_vlm_report(
    facts: EventFacts,
    answer: VlmAnswer,
    shares: dict[str, float] | None,
    *,
    language: str,
    vlm_model: str,
    created_at: int,
    egress: str,
) -> ReportDocument:
    """A report from the model's answer, its stated locations cross-checked with the heatmap
    (``shares``: heat share per grid cell; None when the map could not be read)."""
    region_cells = list(facts.positions)
    findings: list[Finding] = []
    evidence = [answer.observations.strip()] if answer.observations.strip() else []
    evidence += _region_lines(facts, language)
    mismatches: list[LocationCheck] = []
    defects = answer.defects if answer.anomalous else []
    for defect in defects:
        check = check_location(defect.location, shares, region_cells) if shares is not None else None
        if check is not None and not check.agrees:
            mismatches.append(check)
        findings.append(
            Finding(
                defect_type=defect.type,
                location=defect.location,
                severity=defect.severity,
                description=defect.description,
                possible_cause=defect.possible_cause,
                location_agrees=None if check is None else check.agrees,
                observed_locations=[] if check is None else list(check.observed),
            )
        )
    for check in mismatches:
        evidence.append(
            i18n.text(
                language,
                "location_mismatch",
                stated=i18n.position_words(language, check.stated),
                observed=", ".join(i18n.position_words(language, c) for c in check.observed)
                or i18n.text(language, "undetermined"),
            )
        )
    max_area = max((r.area_fraction for r in facts.verdict.regions), default=0.0)
    grade = quality_grade(answer.anomalous, [f.severity for f in findings], facts.verdict.score, max_area)
    actions = [a.strip() for a in answer.recommended_actions if a.strip()]
    actions += [a for a in _grade_actions(language, grade) if a not in actions]
    return ReportDocument(
        **_common(facts, language, created_at, egress),
        source="vlm",
        fallback_reason="",
        vlm_model=vlm_model,
        anomalous=answer.anomalous,
        confidence=answer.confidence,
        summary=answer.assessment.strip(),
        findings=findings,
        evidence=evidence,
        root_cause=answer.root_cause.strip(),
        recommended_actions=actions,
        grade=grade,
        location_disagreement=bool(mismatches),
    )


def build_fallback_report(
    facts: EventFacts,
    *,
    reason: str,
    vocabulary: list[str],
    severity_bands: tuple[float, float],
    language: str,
    created_at: int,
    egress: str,
) -> ReportDocument:
    """A report from local signals only: region geometry, position words, severity from the score
    band, candidate types from the class vocabulary. Marked as not written by a VLM."""
    score = facts.verdict.score
    severity = severity_from_score(score, severity_bands)
    findings: list[Finding] = []
    regions = facts.verdict.regions
    for region, position in zip(regions[:5], facts.positions, strict=False):
        shape = shape_of(region)
        candidates = candidate_types(shape, vocabulary)
        findings.append(
            Finding(
                defect_type=candidates[0] if candidates else "anomaly",
                location=position,
                severity=severity,
                description=i18n.text(
                    language,
                    "fallback_finding",
                    position=i18n.position_words(language, position),
                    share=f"{region.area_fraction:.1%}",
                    shape=i18n.text(language, f"shape_{shape}"),
                ),
                possible_cause="",
                location_agrees=None,
                observed_locations=[position],
            )
        )
    anomalous = bool(regions) and score >= 0.5
    if regions:
        summary = i18n.text(
            language,
            "fallback_summary",
            product=facts.verdict.product_class,
            decision=facts.decision,
            score=f"{score:.2f}",
            count=len(regions),
            position=i18n.position_words(language, facts.positions[0]),
        )
    else:
        summary = i18n.text(language, "no_region")
    evidence = [i18n.text(language, "fallback_notice", reason=reason), *_region_lines(facts, language)]
    if vocabulary:
        evidence.append(i18n.text(language, "candidate_types", types=", ".join(vocabulary)))
    max_area = max((r.area_fraction for r in regions), default=0.0)
    grade = quality_grade(anomalous, [f.severity for f in findings], score, max_area)
    return ReportDocument(
        **_common(facts, language, created_at, egress),
        source="fallback",
        fallback_reason=reason,
        vlm_model="",
        anomalous=anomalous,
        confidence=None,
        summary=summary,
        findings=findings,
        evidence=evidence,
        root_cause="",
        recommended_actions=_grade_actions(language, grade),
        grade=grade,
        location_disagreement=False,
    )
