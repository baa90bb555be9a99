from pathlib import Path

import openai
import pytest

from services.explainer import metrics
from services.explainer.policy import ReferenceLibrary, egress_for, vocabulary_for
from services.explainer.vlm import make_openai_client, resolve_api_key
from shared.errors import ConfigError
from shared.settings import EgressPolicy, ExplainerSettings, load_settings
from tests.support.defect_events import png_bytes


def test_explainer_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEGUARD_EXPLAINER__BASE_URL", "http://vlm.local:8000/v1")
    monkeypatch.setenv("LINEGUARD_EXPLAINER__CLASS_EGRESS", '{"pcb": "crop", "secret": "none"}')
    monkeypatch.setenv("LINEGUARD_EXPLAINER__VOCABULARY", '{"pcb": ["short", "open", "scratch"]}')
    monkeypatch.setenv("LINEGUARD_EXPLAINER__PRICES", '{"m": {"input_per_mtok": 1, "output_per_mtok": 4}}')
    monkeypatch.setenv("LINEGUARD_EXPLAINER__LANGUAGE", "ja")
    settings = load_settings().explainer
    assert egress_for(settings, "pcb") is EgressPolicy.CROP
    assert egress_for(settings, "secret") is EgressPolicy.NONE
    assert egress_for(settings, "washer") is EgressPolicy.FULL
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


def test_api_key_from_settings_file_or_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    assert resolve_api_key(ExplainerSettings(api_key="sk-direct", api_key_file=key_file), {}) == "sk-direct"
    assert (
        resolve_api_key(ExplainerSettings(api_key_file=key_file), {"OPENAI_API_KEY": "x"}) == "sk-from-file"
    )
    assert resolve_api_key(ExplainerSettings(), {"OPENAI_API_KEY": "sk-env"}) == "sk-env"
    assert resolve_api_key(ExplainerSettings(provider="azure"), {"AZURE_OPENAI_API_KEY": "az"}) == "az"
    assert resolve_api_key(ExplainerSettings(), {}) is None
    with pytest.raises(ValueError, match="cannot read"):
        resolve_api_key(ExplainerSettings(api_key_file=tmp_path / "missing"), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_api_key(ExplainerSettings(api_key_file=tmp_path / "empty"), {})
    # The key never shows in the settings' repr.
    assert "sk-direct" not in repr(ExplainerSettings(api_key="sk-direct"))


def test_client_per_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert make_openai_client(ExplainerSettings()) is None  # no endpoint: fallback only
    local = make_openai_client(ExplainerSettings(base_url="http://127.0.0.1:9/v1"))
    assert isinstance(local, openai.AsyncOpenAI) and local.max_retries == 0
    azure = make_openai_client(
        ExplainerSettings(
            provider="azure", azure_endpoint="https://x.openai.azure.com", api_key="k", model="my-deployment"
        )
    )
    assert isinstance(azure, openai.AsyncAzureOpenAI)
    with pytest.raises(ValueError, match="Azure"):
        make_openai_client(ExplainerSettings(provider="azure", azure_endpoint="https://x.openai.azure.com"))


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


def test_metrics_registry_exports_the_promised_series() -> None:
    metrics.VLM_REQUESTS.labels("ok")
    metrics.FALLBACKS.labels("no_endpoint")
    metrics.REPORTS.labels("vlm")
    metrics.CONSUMER_LAG.labels("0")
    names = {m.name for m in metrics.REGISTRY.collect()}
    for name in (
        "explainer_vlm_requests",
        "explainer_vlm_request_seconds",
        "explainer_vlm_tokens",
        "explainer_vlm_cost_usd",
        "explainer_budget_remaining_usd",
        "explainer_fallback_reports",
        "explainer_consumer_lag",
        "explainer_reports",
        "explainer_held_events",
    ):
        assert name in names
