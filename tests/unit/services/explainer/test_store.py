from pathlib import Path

from services.explainer.facts import read_facts
from services.explainer.store import ReportStore, safe_component
from tests.support.messages import T0, defect_event
from tests.support.reports import fallback_document


def test_safe_component_keeps_plain_ids_and_neutralises_the_rest() -> None:
    assert safe_component("frame-00017.a_b") == "frame-00017.a_b"
    for hostile in ("../../etc/passwd", "..", ".hidden", "a/b", "x" * 300, "카메라"):
        safe = safe_component(hostile)
        assert "/" not in safe and not safe.startswith(".") and len(safe) <= 100
    assert safe_component("a/b") != safe_component("a_b")  # no collisions through cleaning


def test_store_layout_lookup_and_publication_marker(tmp_path: Path) -> None:
    store = ReportStore(tmp_path)
    event = defect_event("f-1", captured_at=T0, line_id="L/1", station_id="s1")
    facts = read_facts(event, frame_max_side=1024, crop_max_side=512)
    doc = fallback_document(facts)
    captured_at = facts.verdict.captured_at
    assert store.lookup("f-1", "L/1", "s1", captured_at) is None
    path = store.write(doc, facts.pictures)
    assert store.relative(path).startswith("2023-11-14/L_1-") and path.name == "f-1.json"
    stored = store.lookup("f-1", "L/1", "s1", captured_at)
    assert stored is not None and stored.document == doc and not stored.published
    store.mark_published(doc)
    assert store.lookup("f-1", "L/1", "s1", captured_at).published  # type: ignore[union-attr]
    assert store.reports() == [path]
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes leave no temporaries


def test_store_keeps_the_heatmap_overlay_as_a_picture_file_beside_the_report(tmp_path: Path) -> None:
    from PIL import Image

    store = ReportStore(tmp_path)
    facts = read_facts(defect_event("f-2", captured_at=T0), frame_max_side=1024, crop_max_side=512)
    assert facts.pictures is not None
    path = store.write(fallback_document(facts), facts.pictures)
    overlay = path.with_name("f-2.overlay.jpg")
    assert overlay.read_bytes() == facts.pictures.overlay  # what the report page shows, as a file
    with Image.open(overlay) as image:
        assert image.format == "JPEG" and image.size == (facts.width, facts.height)
