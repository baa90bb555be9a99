from pathlib import Path

import pytest

from services.explainer.policy import ReferenceLibrary, egress_for, vocabulary_for
from shared.errors import ConfigError
from shared.messages.schemas import Verdict
from shared.settings import EgressPolicy, load_settings
from tests.support.images import png_bytes
from tests.support.messages import defect_event


def verdict(product: str) -> Verdict:
    return defect_event(product=product).verdict


def test_explainer_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEGUARD_EXPLAINER__BASE_URL", "http://vlm.local:8000/v1")
    monkeypatch.setenv("LINEGUARD_EXPLAINER__CLASS_EGRESS", '{"pcb": "crop", "secret": "none"}')
    monkeypatch.setenv("LINEGUARD_EXPLAINER__VOCABULARY", '{"pcb": ["short", "open", "scratch"]}')
    monkeypatch.setenv("LINEGUARD_EXPLAINER__PRICES", '{"m": {"input_per_mtok": 1, "output_per_mtok": 4}}')
    monkeypatch.setenv("LINEGUARD_EXPLAINER__LANGUAGE", "ja")
    settings = load_settings().explainer
    assert egress_for(settings, verdict("pcb")) is EgressPolicy.CROP
    assert egress_for(settings, verdict("secret")) is EgressPolicy.NONE
    assert egress_for(settings, verdict("washer")) is EgressPolicy.NONE  # unlisted: the strictest
    assert vocabulary_for(settings, "pcb") == ["short", "open", "scratch"]
    assert vocabulary_for(settings, "washer") == settings.default_vocabulary
    assert settings.prices["m"].output_per_mtok == 4 and settings.language == "ja"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LINEGUARD_EXPLAINER__LANGUAGE", "fr"),
        ("LINEGUARD_EXPLAINER__EGRESS", "everything"),
        ("LINEGUARD_EXPLAINER__MAX_CONCURRENCY", "0"),
        ("LINEGUARD_EXPLAINER__WHEN_BUDGET_SPENT", "drop"),
    ],
)
def test_bad_explainer_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings()


def test_reference_library_reads_class_folders_safely(tmp_path: Path) -> None:
    import numpy as np

    (tmp_path / "washer" / "good").mkdir(parents=True)
    (tmp_path / "washer" / "defect").mkdir(parents=True)
    (tmp_path / "washer" / "good" / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    (tmp_path / "washer" / "good" / "b.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    (tmp_path / "washer" / "defect" / "broken.png").write_bytes(b"not an image")
    library = ReferenceLibrary(tmp_path, per_class=1)
    refs = library.for_class("washer")
    assert [r.label for r in refs] == ["normal"]  # one per kind; the unreadable one is skipped
    assert library.for_class("../washer") == [] and library.for_class("pcb") == []
    assert ReferenceLibrary(None, 2).for_class("washer") == []


def test_reference_cache_is_capped_for_class_names_off_the_wire(tmp_path: Path) -> None:
    from services.explainer import metrics
    from services.explainer.policy import MAX_REFERENCE_CLASSES

    before = (
        metrics.REGISTRY.get_sample_value("lineguard_explainer_evictions_total", {"map": "reference_classes"})
        or 0.0
    )
    library = ReferenceLibrary(tmp_path, per_class=1)
    for n in range(MAX_REFERENCE_CLASSES + 10):
        assert library.for_class(f"hostile-{n}") == []
    assert len(library._cache) == MAX_REFERENCE_CLASSES
    evicted = metrics.REGISTRY.get_sample_value(
        "lineguard_explainer_evictions_total", {"map": "reference_classes"}
    )
    assert evicted == before + 10


def test_reason_labels_are_codes_or_other() -> None:
    from services.explainer.metrics import code_label

    assert code_label("vlm_refused") == "vlm_refused" and code_label("image_too_large") == "image_too_large"
    assert code_label("Robert'); DROP") == "other" and code_label("x" * 100) == "other"
