"""Step four of an event's path: the report (``document.ReportDocument``), written either from the
VLM's answer or from local signals alone (fallback).

Everything here is deterministic given its inputs. The VLM is untrusted input: the grade comes from
the scorer's decision and score, the summary and the recommended actions from fixed texts and the
class's fixed actions; what the VLM wrote (its assessment, observations, root cause, suggested
actions, findings) is kept apart as its words. When it finds no defect where the scorer decided
``reject`` or ``review``, that is a disagreement, shown as one; the decision stands.
"""

from __future__ import annotations

from typing import Any

from services.explainer import i18n
from services.explainer.answer import VlmAnswer
from services.explainer.document import UNCLASSIFIED, Finding, ReportDocument
from services.explainer.facts import EventFacts
from services.explainer.geometry import LocationCheck, check_location, elongation
from shared.engine.config import Decision
from shared.messages.schemas import RegionMsg, frame_keys

LARGE_AREA = 0.05  # a region covering this share of the image counts as extensive

def severity_from_score(score: float, bands: tuple[float, float]) -> str:
    """Severity from the normalised score's band (0.5 is the threshold)."""
    moderate_from, severe_from = bands
    if score >= severe_from:
        return "severe"
    if score >= moderate_from:
        return "moderate"
    return "minor"


def quality_grade(decision: Decision, score: float, max_area: float, bands: tuple[float, float]) -> str:
    """A-F from the scorer alone: A pass · B flagged, not confirmed by the score (review, error, or
    a reject by policy below the threshold) · C/D/E a reject whose score is in the minor, moderate
    or severe band · F severe and extensive (a region over ``LARGE_AREA`` of the image)."""
    if decision is Decision.PASS:
        return "A"
    if decision is not Decision.REJECT or score < 0.5:
        return "B"
    severity = severity_from_score(score, bands)
    if severity == "severe":
        return "F" if max_area >= LARGE_AREA else "E"
    return "C" if severity == "minor" else "D"


def shape_of(region: RegionMsg) -> str:
    if region.area_fraction >= LARGE_AREA:
        return "large"
    return "elongated" if elongation(region.width, region.height) >= 3.0 else "compact"


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


def _actions(language: str, grade: str, class_actions: list[str]) -> list[str]:
    """The grade's template actions, then the class's fixed ones for a defect (C-F)."""
    actions = list(i18n.GRADE_ACTIONS[language][grade])
    if grade in "CDEF":
        actions += [a for a in class_actions if a not in actions]
    return actions


def _summary(facts: EventFacts, language: str) -> str:
    v = facts.verdict
    if not v.regions:
        return i18n.text(language, "no_region")
    return i18n.text(
        language,
        "fallback_summary",
        product=v.product_class,
        decision=facts.decision,
        score=f"{v.score:.2f}",
        count=len(v.regions),
        position=i18n.position_words(language, facts.positions[0]),
    )


def region_findings(facts: EventFacts, severity: str, language: str) -> list[Finding]:
    """The scorer's regions as findings (up to five): position, size and shape. Their type stays
    ``unclassified``: the anomaly model locates defects, it does not name them, and a type guessed
    from a region's shape would read as a finding."""
    findings: list[Finding] = []
    for region, position in zip(facts.verdict.regions[:5], facts.positions, strict=False):
        shape = shape_of(region)
        findings.append(
            Finding(
                defect_type=UNCLASSIFIED,
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
    return findings


def _common(facts: EventFacts, language: str, created_at: int, egress: str) -> dict[str, Any]:
    v = facts.verdict
    return {
        **frame_keys(v),
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
    class_actions: list[str],
    severity_bands: tuple[float, float],
) -> ReportDocument:
    """A report with the model's answer, its stated locations cross-checked with the heatmap
    (``shares``: heat share per grid cell; None when the map could not be read). Grade, summary
    and actions are the scorer's and the fixed texts'; the model's words are kept as its own."""
    region_cells = list(facts.positions)
    score = facts.verdict.score
    disagrees = not answer.anomalous and facts.decision in (Decision.REJECT, Decision.REVIEW)
    findings: list[Finding] = []
    evidence = _region_lines(facts, language)
    mismatches: list[LocationCheck] = []
    for defect in answer.defects if answer.anomalous else []:
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
                by_vlm=True,
            )
        )
    if not findings:  # the model named none: the scorer's regions are still the findings
        findings = region_findings(facts, severity_from_score(score, severity_bands), language)
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
    grade = quality_grade(facts.decision, score, max_area, severity_bands)
    summary = _summary(facts, language)
    if disagrees:
        summary = i18n.text(language, "vlm_disagrees", decision=facts.decision) + " " + summary
    return ReportDocument(
        **_common(facts, language, created_at, egress),
        source="vlm",
        fallback_reason="",
        vlm_model=vlm_model,
        anomalous=answer.anomalous,
        confidence=answer.confidence,
        summary=summary,
        findings=findings,
        evidence=evidence,
        root_cause="",
        recommended_actions=_actions(language, grade, class_actions),
        grade=grade,
        location_disagreement=bool(mismatches),
        vlm_anomalous=answer.anomalous,
        vlm_disagrees=disagrees,
        vlm_assessment=answer.assessment.strip(),
        vlm_observations=answer.observations.strip(),
        vlm_root_cause=answer.root_cause.strip(),
        vlm_suggestions=[a.strip() for a in answer.recommended_actions if a.strip()],
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
    class_actions: list[str] | None = None,
) -> ReportDocument:
    """A report from local signals only: region geometry, position words, severity from the score
    band, the class vocabulary listed as candidates (not chosen). Marked as not written by a VLM."""
    score = facts.verdict.score
    regions = facts.verdict.regions
    findings = region_findings(facts, severity_from_score(score, severity_bands), language)
    evidence = [i18n.text(language, "fallback_notice", reason=reason), *_region_lines(facts, language)]
    if vocabulary:
        evidence.append(i18n.text(language, "candidate_types", types=", ".join(vocabulary)))
    max_area = max((r.area_fraction for r in regions), default=0.0)
    grade = quality_grade(facts.decision, score, max_area, severity_bands)
    return ReportDocument(
        **_common(facts, language, created_at, egress),
        source="fallback",
        fallback_reason=reason,
        vlm_model="",
        anomalous=bool(regions) and score >= 0.5,
        confidence=None,
        summary=_summary(facts, language),
        findings=findings,
        evidence=evidence,
        root_cause="",
        recommended_actions=_actions(language, grade, class_actions or []),
        grade=grade,
        location_disagreement=False,
    )
