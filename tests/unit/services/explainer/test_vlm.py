from pathlib import Path

import openai
import pytest

from services.explainer.vlm import make_openai_client, resolve_api_key
from shared.settings import ExplainerSettings


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
    # A missing optional secret is the fallback mode, never an exit at start (issue 12).
    assert (
        make_openai_client(ExplainerSettings(provider="azure", azure_endpoint="https://x.openai.azure.com"))
        is None
    )


def test_missing_or_empty_key_file_means_fallback_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "empty").write_text("")
    for key_file in (tmp_path / "missing", tmp_path / "empty"):
        # The compose file mounts an empty secret file and leaves the base URL empty: offline mode.
        assert make_openai_client(ExplainerSettings(base_url="", api_key_file=key_file)) is None
        assert (
            make_openai_client(ExplainerSettings(base_url="http://127.0.0.1:9/v1", api_key_file=key_file))
            is None
        )
    assert make_openai_client(ExplainerSettings(api_key="")) is None
