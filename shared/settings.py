"""The one configuration object for every Lineguard service.

Values come from environment variables with the ``LINEGUARD_`` prefix. Settings common to all
services are top level (``LINEGUARD_KAFKA_BOOTSTRAP``, ``LINEGUARD_TOPIC_PREFIX``); each service has
its own section, set with a double underscore (``LINEGUARD_SCORER__MAX_BATCH=8``). Everything is
validated when a service starts, so a bad value stops it with a message naming the variable.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LINEGUARD_"


class LatePolicy(StrEnum):
    """What a verdict says when the frame's deadline has already passed."""

    REJECT = "reject"
    REVIEW = "review"
    SCORE = "score"  # score it anyway and report the real decision, marked late


class BrokerSettings(BaseModel):
    """The local single-node KRaft broker started by ``lineguard kafka up`` and the test harness."""

    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    data_dir: Path = Path("var/kafka")
    heap: str = "512m"
    start_timeout_s: float = Field(90.0, gt=0)


class ScorerSettings(BaseModel):
    model_dir: Path | None = None
    group_id: str = "lineguard-scorer"
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: int = Field(20, ge=0, le=10_000)
    decode_threads: int = Field(2, ge=1, le=64)
    torch_threads: int = Field(2, ge=1, le=256)
    late_policy: LatePolicy = LatePolicy.REJECT
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    transactional_id_prefix: str = "lineguard-scorer"


class CameraSimSettings(BaseModel):
    line_id: str = "line-1"
    station_id: str = "station-1"
    camera_id: str = "cam-1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    kafka_bootstrap: str | None = None
    topic_prefix: str = "lineguard"
    log_level: str = "INFO"
    metrics_port: int = Field(0, ge=0, le=65535)  # 0: no HTTP metrics endpoint
    otel_exporter: str = "none"  # none | console | otlp

    broker: BrokerSettings = BrokerSettings()
    scorer: ScorerSettings = ScorerSettings()
    camera_sim: CameraSimSettings = CameraSimSettings()

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_is_legal(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not value or not set(value) <= allowed or len(value) > 100:
            raise ValueError("must be 1-100 characters of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_known(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic (``frames`` -> ``lineguard.frames``)."""
        return f"{self.topic_prefix}.{name}"

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers: the configured ones, else the local broker's."""
        return self.kafka_bootstrap or f"localhost:{self.broker.port}"


class SettingsError(ValueError):
    """Raised with one readable line per invalid environment variable."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            var = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{var}: {err['msg']}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
