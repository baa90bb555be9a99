import pytest

from shared.errors import ConfigError
from shared.settings import LatePolicy, load_settings


def test_defaults_and_topic_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LINEGUARD_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("LINEGUARD_TOPIC_PREFIX", raising=False)
    settings = load_settings()
    assert settings.topic("verdicts") == "lineguard.verdicts"
    assert settings.bootstrap == f"localhost:{settings.broker.port}"
    assert settings.scorer.late_policy is LatePolicy.REJECT


def test_environment_overrides_top_level_and_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEGUARD_KAFKA_BOOTSTRAP", "broker:19092")
    monkeypatch.setenv("LINEGUARD_TOPIC_PREFIX", "plant7")
    monkeypatch.setenv("LINEGUARD_SCORER__MAX_BATCH", "4")
    monkeypatch.setenv("LINEGUARD_SCORER__LATE_POLICY", "review")
    settings = load_settings()
    assert settings.bootstrap == "broker:19092"
    assert settings.topic("frames") == "plant7.frames"
    assert settings.scorer.max_batch == 4
    assert settings.scorer.late_policy is LatePolicy.REVIEW


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("LINEGUARD_SCORER__MAX_BATCH", "0", "LINEGUARD_SCORER__MAX_BATCH"),
        ("LINEGUARD_SCORER__LATE_POLICY", "ignore", "LINEGUARD_SCORER__LATE_POLICY"),
        ("LINEGUARD_TOPIC_PREFIX", "bad prefix!", "LINEGUARD_TOPIC_PREFIX"),
        ("LINEGUARD_LOG_LEVEL", "loud", "LINEGUARD_LOG_LEVEL"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_the_backbone_runtime_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    options = load_settings().scorer.runtime_options()
    assert (options.runtime, options.device, options.precision) == ("auto", "cpu", "fp32")
    assert (options.torch_threads, options.model_workers) == (1, 2)  # one stream per model worker
    monkeypatch.setenv("LINEGUARD_SCORER__RUNTIME", "onnx")
    monkeypatch.setenv("LINEGUARD_SCORER__PRECISION", "auto")
    monkeypatch.setenv("LINEGUARD_SCORER__TORCH_THREADS", "2")
    options = load_settings().scorer.runtime_options()
    assert (options.runtime, options.precision, options.torch_threads) == ("onnx", "auto", 2)
    monkeypatch.setenv("LINEGUARD_SCORER__RUNTIME", "tensorrt")
    with pytest.raises(ConfigError, match="LINEGUARD_SCORER__RUNTIME"):
        load_settings()


def test_a_gpu_gets_one_worker_and_large_batches_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEGUARD_SCORER__DEVICE", "cuda")
    scorer = load_settings().scorer
    assert (scorer.max_batch, scorer.model_workers) == (32, 1)
    assert scorer.search_threads >= 1
    monkeypatch.setenv("LINEGUARD_SCORER__MAX_BATCH", "12")
    assert load_settings().scorer.max_batch == 12  # the operator's value wins
    monkeypatch.setenv("LINEGUARD_SCORER__RUNTIME", "openvino")
    with pytest.raises(ConfigError, match="CPU only"):
        load_settings()


def test_a_core_dataclass_takes_its_sections_fields_of_the_same_names() -> None:
    from services.console.core import StateLimits
    from services.console.service import state_limits
    from shared.settings import ConsoleSettings, Settings, from_section

    section = ConsoleSettings(stations_max=7, evidence_max_bytes=2 << 20, models_history=3)
    limits = from_section(StateLimits, section)
    assert (limits.stations_max, limits.evidence_max_bytes, limits.models_history) == (7, 2 << 20, 3)
    assert limits.verdicts_per_station == section.verdicts_per_station
    assert limits.changes_kept == StateLimits().changes_kept  # not a setting: the dataclass's default
    assert state_limits(Settings(console=section)) == limits
