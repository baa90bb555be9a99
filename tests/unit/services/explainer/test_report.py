import re

import pytest
from markdown_it import MarkdownIt

from services.explainer import i18n
from services.explainer.document import ReportDocument
from services.explainer.facts import EventFacts, verdict_facts
from services.explainer.geometry import POSITION_CODES, Box
from services.explainer.pictures import EventPictures
from services.explainer.render import render_html, render_json, render_markdown
from services.explainer.report import (
    quality_grade,
    severity_from_score,
)
from shared.engine.config import Decision, Region
from tests.support.messages import T0, verdict
from tests.support.reports import answer_json, fallback_document, vlm_document

VOCABULARY = ["scratch", "dent", "missing part"]


def facts(
    score: float = 0.8, regions: list[tuple[int, int, int, int, float, float]] | None = None
) -> EventFacts:
    regions = [(100, 10, 30, 4, score, 0.006)] if regions is None else regions
    decided = verdict(
        "f-1",
        "reject",
        score=score,
        regions=[Region(*region) for region in regions],
        captured_at=T0,
        latency_ms=10.0,
    )
    return verdict_facts(decided, 160, 120)


@pytest.mark.parametrize(
    ("decision", "score", "area", "grade"),
    [
        ("pass", 0.3, 0.0, "A"),
        ("review", 0.45, 0.0, "B"),
        ("review", 0.95, 0.2, "B"),  # flagged, not decided: never graded as a confirmed defect
        ("error", 0.0, 0.0, "B"),
        ("reject", 0.4, 0.0, "B"),  # a reject by policy (late, fail-safe), not by the score
        ("reject", 0.55, 0.0, "C"),
        ("reject", 0.7, 0.0, "D"),
        ("reject", 0.9, 0.01, "E"),
        ("reject", 0.9, 0.2, "F"),
    ],
)
def test_quality_grade_comes_from_the_decision(decision: str, score: float, area: float, grade: str) -> None:
    assert quality_grade(Decision(decision), score, area, (0.6, 0.8)) == grade


def test_severity_from_score_bands() -> None:
    assert severity_from_score(0.55, (0.6, 0.8)) == "minor"
    assert severity_from_score(0.6, (0.6, 0.8)) == "moderate"
    assert severity_from_score(0.95, (0.6, 0.8)) == "severe"


def test_fallback_report_is_marked_and_built_from_local_signals() -> None:
    doc = fallback_document(facts(0.85), vocabulary=VOCABULARY)
    assert doc.source == "fallback" and doc.fallback_reason == "no_endpoint" and doc.vlm_model == ""
    assert doc.confidence is None
    assert "NOT WRITTEN BY A VLM" in doc.evidence[0]
    (finding,) = doc.findings
    assert finding.location == "upper right" and finding.severity == "severe"
    # Without a VLM nobody classified the defect: its shape is described, its type is not guessed.
    assert finding.defect_type == "unclassified" and "elongated" in finding.description
    assert "upper right" in doc.summary and "0.85" in doc.summary
    assert doc.grade == "E"
    compact = fallback_document(
        facts(0.65, [(10, 80, 6, 6, 0.65, 0.002)]), "budget_spent", vocabulary=VOCABULARY
    )
    assert compact.findings[0].defect_type == "unclassified"
    assert compact.findings[0].location == "lower left" and "compact" in compact.findings[0].description
    assert compact.grade == "D"


def test_fallback_without_regions_or_fitting_vocabulary() -> None:
    doc = fallback_document(facts(0.4, []), "egress_none", egress="none")
    assert doc.findings == [] and not doc.anomalous and doc.grade == "B"  # rejected all the same
    odd = fallback_document(facts(0.9), "x", vocabulary=["blowhole"])
    assert odd.findings[0].defect_type == "unclassified"


def test_vlm_report_cross_checks_the_stated_location() -> None:
    shares = dict.fromkeys(POSITION_CODES, 0.0)
    shares["upper right"] = 1.0
    good = vlm_document(facts(), answer_json(location="upper right"), shares)
    assert not good.location_disagreement and good.findings[0].location_agrees is True
    assert good.source == "vlm" and good.grade == "E"  # reject at 0.8: the severe band
    assert good.vlm_suggestions == ["Inspect the transfer fixture for burrs."]  # the VLM's words
    assert good.recommended_actions == i18n.GRADE_ACTIONS["en"]["E"]  # ours, from the grade
    bad = vlm_document(facts(), answer_json(location="lower left"), shares)
    assert bad.location_disagreement and bad.findings[0].location_agrees is False
    assert any("does not match the heatmap" in line and "upper right" in line for line in bad.evidence)
    unchecked = vlm_document(facts(), answer_json())
    assert unchecked.findings[0].location_agrees is None and not unchecked.location_disagreement


def test_not_anomalous_answer_is_a_disagreement_and_the_regions_stay() -> None:
    doc = vlm_document(facts(0.7), answer_json(anomalous=False))
    assert doc.vlm_disagrees and doc.vlm_anomalous is False and doc.grade == "D"
    assert [(f.location, f.by_vlm) for f in doc.findings] == [("upper right", False)]
    assert doc.summary.startswith("THE VLM DISAGREES")


@pytest.mark.parametrize(
    ("language", "heading", "position"), [("ko", "권장 조치", "오른쪽 위"), ("ja", "推奨対応", "右上")]
)
def test_fixed_texts_follow_the_language(language: str, heading: str, position: str) -> None:
    doc = fallback_document(facts(), vocabulary=VOCABULARY, language=language)
    markdown = render_markdown(doc)
    assert heading in markdown and position in markdown
    assert "VLM" in doc.evidence[0]


def pictures() -> EventPictures:
    return EventPictures(b"\xff\xd8frame", b"\xff\xd8overlay", b"\xff\xd8crop", Box(0, 0, 10, 10), 160, 120)


def test_html_is_self_contained_and_escapes_model_text() -> None:
    answer = answer_json(assessment="<script>alert(1)</script> & more")
    doc = vlm_document(facts(), answer)
    html = render_html(doc, pictures())
    assert "<script>" not in html and "&lt;script&gt;" in html
    sources = re.findall(r'src="([^"]+)"', html)
    assert len(sources) == 3 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert ">E<" in html  # the grade
    rendered = MarkdownIt("commonmark").enable("table").render(render_markdown(doc))
    assert "<script>" not in rendered and "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered  # quoted


def test_fallback_html_shows_the_notice_and_json_round_trips() -> None:
    doc = fallback_document(facts(), "endpoint_down", vocabulary=VOCABULARY, egress="crop")
    html = render_html(doc, None)
    assert 'class="fallback"' in html and "endpoint_down" in html and "<img" not in html
    import json

    again = ReportDocument.from_dict(json.loads(render_json(doc)))
    assert again == doc


def _captions(html: str) -> list[str]:
    return re.findall(r"<figcaption>([^<]*)</figcaption>", html)


@pytest.mark.parametrize(
    ("language", "position"), [("en", "upper right"), ("ko", "오른쪽 위"), ("ja", "右上")]
)
def test_crop_caption_names_the_region_as_the_findings_do(language: str, position: str) -> None:
    doc = fallback_document(facts(), vocabulary=VOCABULARY, language=language)
    crop_caption = _captions(render_html(doc, pictures()))[-1]
    finding_position = i18n.position_words(language, doc.findings[0].location)
    assert finding_position == position and position in crop_caption and "1" in crop_caption


def test_crop_caption_without_a_region_names_the_heatmap_peak_where_it_is() -> None:
    doc = fallback_document(facts(0.4, []), "egress_none", egress="none")
    lower_left = EventPictures(b"\xff\xd8f", b"\xff\xd8o", b"\xff\xd8c", Box(0, 80, 40, 120), 160, 120)
    caption = _captions(render_html(doc, lower_left))[-1]
    assert "peak" in caption and "lower left" in caption


def test_a_written_report_logs_its_source_grade_and_rounded_cost() -> None:
    doc = fallback_document(facts(0.85), vocabulary=VOCABULARY)
    doc.cost_usd = 0.00123456789
    assert doc.log_fields() == {
        "frame_id": "f-1",
        "source": "fallback",
        "grade": "E",
        "fallback_reason": "no_endpoint",
        "cost_usd": 0.001235,
    }
