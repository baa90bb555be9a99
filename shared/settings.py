"""The one configuration object for every Lineguard service.

Values come from environment variables with the ``LINEGUARD_`` prefix. Settings common to all
services are top level (``LINEGUARD_KAFKA_BOOTSTRAP``, ``LINEGUARD_TOPIC_PREFIX``); each service has
its own section, set with a double underscore (``LINEGUARD_SCORER__MAX_BATCH=8``). Everything is
validated when a service starts, so a bad value stops it with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.engine.config import Decision, Device, Precision, RuntimeChoice, RuntimeOptions
from shared.errors import ConfigError
from shared.limits import MAX_FILE_BYTES, MAX_IMAGE_BYTES, MAX_PIXELS, MAX_REFERENCED_PIXELS

ENV_PREFIX = "LINEGUARD_"


def comma_or_json_list(value: object) -> object:
    """A list setting from the environment: ``a,b`` or a JSON list; other values pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class LatePolicy(StrEnum):
    """What a verdict says when the frame's deadline has already passed."""

    REJECT = "reject"
    REVIEW = "review"
    SCORE = "score"  # score it anyway and report the real decision, marked late


class SecurityProtocol(StrEnum):
    """How a Kafka client talks to the brokers (Kafka's own names)."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class SaslMechanism(StrEnum):
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    PLAIN = "PLAIN"  # the password itself crosses the wire: only inside TLS


_KAFKA_VAR = ENV_PREFIX + "KAFKA__"


class KafkaSettings(BaseModel):
    """How every client reaches the cluster (``LINEGUARD_KAFKA__*``), applied by the one client
    wrapper (``shared.kafka.client``), and how durable the topics it creates are.

    Secrets come from files only (a password or key passphrase in an environment variable would be
    readable in ``/proc/<pid>/environ``), read when a client is made, never logged.
    """

    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism = SaslMechanism.SCRAM_SHA_512
    sasl_username: str | None = Field(None, min_length=1, max_length=256)
    sasl_password_file: Path | None = None
    ssl_ca_file: Path | None = None  # PEM bundle; unset: the system's trusted CAs
    ssl_cert_file: Path | None = None  # client certificate chain for mutual TLS (may also hold the key)
    ssl_key_file: Path | None = None
    ssl_key_password_file: Path | None = None  # for an encrypted key
    ssl_check_hostname: bool = True  # the broker's certificate must name the host connected to
    # Topics made by `lineguard topics ensure` (a cluster needs 3 and 2: one broker may fail).
    replication_factor: int = Field(1, ge=1, le=16)
    min_insync_replicas: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _complete(self) -> KafkaSettings:
        """Refuse half-configured security: every problem named by its variable, in one message."""
        protocol = self.security_protocol
        problems: list[str] = []
        sasl = {"SASL_USERNAME": self.sasl_username, "SASL_PASSWORD_FILE": self.sasl_password_file}
        tls = {
            "SSL_CA_FILE": self.ssl_ca_file,
            "SSL_CERT_FILE": self.ssl_cert_file,
            "SSL_KEY_FILE": self.ssl_key_file,
            "SSL_KEY_PASSWORD_FILE": self.ssl_key_password_file,
        }
        for name, value in sasl.items():
            if protocol.uses_sasl and value is None:
                problems.append(f"{_KAFKA_VAR}SECURITY_PROTOCOL={protocol} needs {_KAFKA_VAR}{name}")
            elif not protocol.uses_sasl and value is not None:
                problems.append(
                    f"{_KAFKA_VAR}{name} is set but {_KAFKA_VAR}SECURITY_PROTOCOL={protocol} does not "
                    "authenticate with SASL (SASL_SSL does)"
                )
        for name, value in tls.items():
            if not protocol.uses_tls and value is not None:
                problems.append(
                    f"{_KAFKA_VAR}{name} is set but {_KAFKA_VAR}SECURITY_PROTOCOL={protocol} does not "
                    "use TLS (SSL or SASL_SSL do)"
                )
        if protocol.uses_tls:
            if self.ssl_key_file is not None and self.ssl_cert_file is None:
                problems.append(f"{_KAFKA_VAR}SSL_KEY_FILE needs {_KAFKA_VAR}SSL_CERT_FILE (its certificate)")
            if self.ssl_key_password_file is not None and self.ssl_cert_file is None:
                problems.append(f"{_KAFKA_VAR}SSL_KEY_PASSWORD_FILE needs {_KAFKA_VAR}SSL_CERT_FILE")
        if self.min_insync_replicas > self.replication_factor:
            problems.append(
                f"{_KAFKA_VAR}MIN_INSYNC_REPLICAS={self.min_insync_replicas} is more than "
                f"{_KAFKA_VAR}REPLICATION_FACTOR={self.replication_factor}: no write could succeed"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class NonFinitePolicy(StrEnum):
    """The decision for a frame whose score, threshold or normaliser is not a finite number."""

    REJECT = "reject"
    REVIEW = "review"


class BrokerSettings(BaseModel):
    """The local single-node KRaft broker started by ``lineguard kafka up`` and the test harness."""

    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    # `kafka up --secure` only: the broker's own mutual-TLS listener (its identity, e.g. to set ACLs).
    internal_port: int = Field(9094, ge=1, le=65535)
    secure: bool = False  # SASL_SSL with per-principal credentials and ACLs, in <data_dir>/secure
    data_dir: Path = Path("var/kafka")
    libs_dir: Path = Path(".cache/kafka/libs")  # filled by `make kafka-jars`
    heap: str = Field("512m", pattern=r"^[1-9][0-9]*[mMgG]$")
    start_timeout_s: float = Field(90.0, gt=0)
    stop_timeout_s: float = Field(30.0, gt=0)


GPU_DEFAULTS = {"max_batch": 32, "model_workers": 1, "search_threads": max(1, min(8, os.cpu_count() or 1))}


class ScorerSettings(BaseModel):
    model_dir: Path | None = None
    group_id: str = "lineguard-scorer"
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: int = Field(20, ge=0, le=10_000)
    decode_threads: int = Field(2, ge=1, le=64)
    # Batches scored at once, each with ``torch_threads`` intra-op and ``search_threads`` faiss
    # threads. On CPUs, one worker per core with one thread each beats one worker with every core:
    # 48-52 vs 37-42 images/s on 2 cores (docs/benchmarks.md), and work from the Kafka client or
    # the broker then stalls one worker instead of every thread of a parallel region. On a GPU use 1.
    model_workers: int = Field(2, ge=1, le=64)
    torch_threads: int = Field(1, ge=1, le=256)  # intra-op threads per worker, whatever the runtime
    search_threads: int = Field(1, ge=1, le=256)
    # The backbone (docs/operations.md, "Engine runtime"): torch, openvino or onnx; auto = OpenVINO
    # for a model that carries its backbone export (3-4x torch on 2 CPU cores, docs/benchmarks.md),
    # torch otherwise. device cuda runs torch on the GPU; precision auto = bf16 where native.
    runtime: RuntimeChoice = "auto"
    device: Device = "cpu"
    precision: Precision = "fp32"
    late_policy: LatePolicy = LatePolicy.REJECT
    max_image_bytes: int = Field(MAX_IMAGE_BYTES, ge=1024)
    max_image_pixels: int = Field(MAX_PIXELS, ge=64)
    transactional_id_prefix: str = "lineguard-scorer"
    session_timeout_ms: int = Field(10_000, ge=6_000, le=300_000)  # broker minimum is 6 s by default
    watch_models: bool = True  # follow the models topic and hot-swap announced models
    # Announced models (docs/operations.md, "Roll a model out, and back"). Announced directories must
    # lie inside models_root; weight files are found in weights_dir by the sha256 a manifest names.
    models_root: Path = Path("models")
    weights_dir: Path | None = None
    # Ed25519 public keys (files, or folders of *.pub; comma-separated or a JSON list) whose signature
    # an announcement must carry. Empty: announcements are taken unsigned, with a warning at start.
    trusted_keys: Annotated[list[Path], NoDecode] = []
    announcement_max_skew_s: float = Field(300.0, ge=0, le=86_400)  # announced_at this far ahead at most
    # Fault handling (docs/operations.md, "Scorer faults").
    non_finite_decision: NonFinitePolicy = NonFinitePolicy.REJECT  # NaN/inf never passes
    score_timeout_s: float = Field(30.0, gt=0, le=3600)  # one batch's decode or model run
    send_timeout_s: float = Field(20.0, gt=0, le=600)  # every output of a transaction delivered
    commit_timeout_s: float = Field(20.0, gt=0, le=600)  # offsets added and the transaction committed
    abort_timeout_s: float = Field(15.0, gt=0, le=600)
    recover_timeout_s: float = Field(60.0, gt=0, le=600)  # new producer and committed offset, per try
    publish_attempts: int = Field(3, ge=1, le=20)  # transactions tried per batch before recovering
    # The broker aborts (and fences) a transaction open longer than this: above send + commit.
    transaction_timeout_ms: int = Field(60_000, ge=1_000, le=900_000)
    # A partition with records to process and no progress for this long: health red, exit non-zero.
    progress_timeout_s: float = Field(120.0, gt=0, le=86_400)
    # Wire values (stations, hinted classes) kept as distinct metric label values, and as keys of
    # each alert-detector map; past the cap they are counted as "other" / the oldest is evicted.
    max_label_values: int = Field(256, ge=1, le=100_000)
    max_alert_keys: int = Field(4096, ge=1, le=1_000_000)
    # Cold start (docs/operations.md, "Cold start"): a few-shot class's verdicts are `review` until
    # this many confirmed normal images have been fitted into its model; None: as many as the model
    # was fitted with (`lineguard fit --review-until`, in its manifest). 0 turns the gate off.
    review_until_confirmed: int | None = Field(None, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _gpu_defaults(self) -> ScorerSettings:
        # One GPU: one model worker with large batches (the GPU works in parallel within a batch;
        # more workers would only queue on it), and the CPU's cores for the faiss search meanwhile.
        # Only where the operator has not set the value.
        if self.device == "cuda":
            if self.runtime in ("openvino", "onnx"):
                raise ValueError(f"runtime {self.runtime} runs on the CPU only; on cuda use torch or auto")
            for name, value in GPU_DEFAULTS.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self

    def runtime_options(self) -> RuntimeOptions:
        """How each model worker runs the backbone."""
        return from_section(RuntimeOptions, self)

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        return comma_or_json_list(value)

    @model_validator(mode="after")
    def _timeouts_fit(self) -> ScorerSettings:
        if (self.send_timeout_s + self.commit_timeout_s) * 1000 >= self.transaction_timeout_ms:
            raise ValueError("send_timeout_s + commit_timeout_s must be below transaction_timeout_ms")
        busy = self.score_timeout_s + self.send_timeout_s + self.commit_timeout_s + self.abort_timeout_s
        if self.progress_timeout_s <= busy:
            raise ValueError(
                "progress_timeout_s must exceed score_timeout_s + send_timeout_s + commit_timeout_s "
                "+ abort_timeout_s (one slow batch is not a stall)"
            )
        return self


class CameraSimSettings(BaseModel):
    line_id: str = "line-1"
    station_id: str = "station-1"
    camera_id: str = "cam-1"


class OverflowPolicy(StrEnum):
    """What a live camera's full buffer does with a new frame (hot folders always wait)."""

    DROP_OLDEST = "drop_oldest"  # evict the oldest buffered frame, counted as dropped
    BLOCK = "block"  # hold the source until there is room (a stream then falls behind)


class CameraGatewaySettings(BaseModel):
    """``lineguard camera-gateway``: real cameras (hot folders, streams) -> the ``frames`` topic."""

    config_file: Path | None = None  # the cameras (YAML); --config overrides
    line_id: str = "line-1"  # for cameras given on the command line without --line-id
    buffer_frames: int = Field(16, ge=1, le=10_000)  # per camera
    buffer_bytes: int = Field(64 << 20, ge=1 << 20, le=8 << 30)  # per camera
    overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    # Larger: by claim check when LINEGUARD_CLAIM_CHECK__URL is set (over its inline_max_bytes), else refused.
    max_image_bytes: int = Field(MAX_IMAGE_BYTES, ge=1024, le=MAX_IMAGE_BYTES)
    max_batch: int = Field(16, ge=1, le=256)  # frames per Kafka transaction
    # Stable per gateway instance (a restarted gateway must come back with the same id so the broker
    # ends its predecessor's open transaction at once). None: derived from the configured camera ids.
    transactional_id: str | None = None
    transaction_timeout_ms: int = Field(10_000, ge=1_000, le=900_000)
    send_timeout_s: float = Field(30.0, gt=0, le=600)  # one transaction, before the producer is renewed
    retry_initial_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(15.0, gt=0, le=600)
    ledger_timeout_s: float = Field(120.0, gt=0, le=3600)  # reading the ledger at start or recovery
    drain_timeout_s: float = Field(10.0, ge=0, le=600)  # at shutdown, to publish what is buffered
    jpeg_quality: int = Field(90, ge=1, le=100)  # decoded stream frames


class EgressPolicy(StrEnum):
    """What of a frame may leave the plant for the VLM endpoint."""

    FULL = "full"  # frame, anomaly overlay and crop
    CROP = "crop"  # only the crop around the top region
    NONE = "none"  # nothing: offline fallback report only


class UnavailablePolicy(StrEnum):
    """What the explainer does with an event it cannot send (budget spent, endpoint down)."""

    HOLD = "hold"  # keep it uncommitted and retry later
    FALLBACK = "fallback"  # write the offline fallback report now


class ModelPrice(BaseModel):
    """USD per million tokens; used to estimate cost against the daily budget."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class ExplainerSettings(BaseModel):
    """The VLM report writer (``lineguard explainer``); see docs/explainer.md."""

    group_id: str = "lineguard-explainer"
    provider: Literal["openai", "azure"] = "openai"
    base_url: str | None = None  # None (and no Azure endpoint): fallback reports only
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = None  # else api_key_file, else OPENAI_API_KEY / AZURE_OPENAI_API_KEY
    api_key_file: Path | None = None
    azure_endpoint: str | None = None
    azure_api_version: str = "2024-10-21"
    language: Literal["en", "ko", "ja"] = "en"
    report_dir: Path = Path("var/reports")
    structured_outputs: bool = True  # else JSON mode plus local validation
    request_timeout_s: float = Field(60.0, gt=0)
    max_response_bytes: int = Field(4 << 20, ge=64 << 10, le=256 << 20)  # a bigger answer is refused unread
    ca_file: Path | None = None  # CA bundle (PEM) the endpoint's certificate must chain to; None: system CAs
    max_attempts: int = Field(4, ge=1, le=20)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_concurrency: int = Field(2, ge=1, le=256)
    requests_per_minute: float = Field(30.0, gt=0)
    daily_budget_usd: float = Field(5.0, ge=0)
    prices: dict[str, ModelPrice] = {}
    default_price: ModelPrice = ModelPrice(input_per_mtok=5.0, output_per_mtok=15.0)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_s: float = Field(60.0, gt=0)
    when_budget_spent: UnavailablePolicy = UnavailablePolicy.FALLBACK
    when_endpoint_down: UnavailablePolicy = UnavailablePolicy.HOLD
    hold_retry_s: float = Field(30.0, gt=0)
    max_hold_s: float = Field(3600.0, gt=0)  # then a fallback report, so nothing waits forever
    max_pending: int = Field(64, ge=1, le=10_000)
    # Egress fails closed (services/explainer/policy.py): a class gets class_egress[class] only if
    # listed and confirmed by the image; any other class (renamed, unknown, an unconfirmed camera
    # hint) gets unlisted_egress, or if unset the strictest of egress and the class_egress values.
    egress: EgressPolicy = EgressPolicy.FULL
    class_egress: dict[str, EgressPolicy] = {}
    unlisted_egress: EgressPolicy | None = None
    vocabulary: dict[str, list[str]] = {}
    default_vocabulary: list[str] = [
        "scratch",
        "crack",
        "spot",
        "stain",
        "missing part",
        "deformation",
        "contamination",
    ]
    # Fixed actions a class's defect reports list after the grade's template actions (the VLM's
    # suggestions are never actions: they are quoted as its words).
    class_actions: dict[str, list[str]] = {}
    references_dir: Path | None = None  # <dir>/<class>/{good,defect}/*.png|jpg
    references_per_class: int = Field(1, ge=0, le=4)
    follow_up_below: float = Field(0.5, ge=0, le=1)  # 0 disables the low-confidence follow-up
    max_output_tokens: int = Field(800, ge=64, le=16_384)
    temperature: float = Field(0.0, ge=0, le=2)
    frame_max_side: int = Field(1024, ge=64, le=4096)
    crop_max_side: int = Field(512, ge=32, le=4096)
    severity_bands: tuple[float, float] = (0.6, 0.8)  # normalised score: minor < a <= moderate < b <= severe


class FailSafeAction(StrEnum):
    """What the PLC bridge asserts when the scorer goes silent or a tracked part misses its deadline."""

    REJECT = "reject"  # assert the station's reject output
    STOP_LINE = "stop_line"  # assert reject and the line-stop output


class PlcBridgeSettings(BaseModel):
    """``lineguard plc-bridge``: verdicts -> PLC outputs over Modbus TCP and/or OPC UA."""

    group_id: str = "lineguard-plc-bridge"
    # Station ids in register-block order: the n-th station owns block n of the register map.
    stations: list[str] = ["station-1"]
    modbus_host: str | None = None  # unset: no Modbus target
    modbus_port: int = Field(default=502, ge=1, le=65535)
    modbus_device_id: int = Field(default=1, ge=0, le=255)
    opcua_url: str | None = None  # e.g. opc.tcp://plc:4840/; unset: no OPC UA target
    opcua_namespace: str = "urn:lineguard:plc"
    # Checked against Decision by the bridge (its message names an unknown value; pydantic's would not).
    reject_decisions: list[str] = [Decision.REJECT, Decision.REVIEW, Decision.ERROR]
    fail_safe: FailSafeAction = FailSafeAction.REJECT
    heartbeat_interval_s: float = Field(default=1.0, gt=0, le=60)  # bridge -> PLC heartbeat counter
    # No proof of a working scorer this long -> fail-safe: Kafka unreachable, the scorer's group empty,
    # or frames waiting on a partition while the group's committed offset there does not move.
    scorer_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    part_deadline_ms: int = Field(default=0, ge=0, le=600_000)  # 0: no part tracking (PLC trigger counter)
    # A verdict older than this on arrival (from its frame's capture) fails its station safe; 0: only
    # verdicts the scorer marked late do.
    verdict_deadline_ms: int = Field(default=2000, ge=0, le=600_000)
    poll_interval_ms: int = Field(default=50, ge=5, le=10_000)
    max_tracked_parts: int = Field(default=1000, ge=1, le=100_000)
    dedup_window: int = Field(default=100_000, ge=1, le=10_000_000)  # (station, frame id)s remembered
    io_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # Offsets of verdicts the PLC shows are committed at most this often (0: as soon as shown). A
    # restart replays what is not committed; the ledger keeps those replays off the PLC.
    commit_interval_ms: int = Field(default=0, ge=0, le=600_000)
    # The applied-verdicts ledger (docs/operations.md, "Replays after a crash"): kept across restarts.
    ledger_path: Path = Path("var/plc-bridge/applied-verdicts.jsonl")
    ledger_per_station: int = Field(default=4096, ge=16, le=1_000_000)  # the last applied, per station


class WebhookFormat(StrEnum):
    JSON = "json"
    SLACK = "slack"
    TEAMS = "teams"


class AlertsSettings(BaseModel):
    """``lineguard alerts``: operator alerts from the ``alerts`` topic -> a webhook."""

    group_id: str = "lineguard-alerts"
    # The webhook URL holds a secret for Slack/Teams: never logged. Unset, empty, or a missing or
    # empty file: the service runs without a webhook (each alert logged once, see operations.md).
    webhook_url: str | None = None
    webhook_url_file: Path | None = None  # alternative: read the URL from a (secret) file
    webhook_format: WebhookFormat = WebhookFormat.JSON
    ca_file: Path | None = None  # CA bundle (PEM) the webhook's certificate must chain to; None: system CAs
    state_dir: Path = Path("var/alerts")  # the delivery ledger (which alerts went out), kept across restarts
    ledger_retention_s: float = Field(default=7 * 86_400.0, ge=60, le=365 * 86_400)
    max_tracked: int = Field(default=100_000, ge=100, le=10_000_000)  # ledger entries and dedup keys kept
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    dedup_window_s: float = Field(default=300.0, ge=0, le=86_400)
    rate_limit_per_minute: int = Field(default=30, ge=1, le=10_000)
    rate_limit_burst: int = Field(default=5, ge=1, le=10_000)  # alerts sent back to back before limiting
    retry_initial_s: float = Field(default=0.5, gt=0, le=60)
    retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    give_up_after_s: float = Field(default=600.0, gt=0, le=86_400)  # then the alert goes to the DLQ
    # Detection, used by the scorer (services/scorer/alerts.py)
    consecutive_rejects: int = Field(default=5, ge=1, le=10_000)
    unknown_product_cooldown_s: float = Field(default=60.0, ge=0, le=86_400)
    drift_recent: int = Field(default=50, ge=5, le=10_000)
    drift_baseline: int = Field(default=500, ge=10, le=1_000_000)
    drift_threshold: float = Field(default=1.0, gt=0, le=100)  # recent-mean shift, in baseline std devs


class ConsoleSettings(BaseModel):
    """``lineguard console``: the operators' web page and their feedback (docs/operations.md, "Operator
    console"). Writing needs the token or the trusted proxy's header; without either it is read-only."""

    host: str = "127.0.0.1"  # 0.0.0.0 in a container; behind a reverse proxy keep it on localhost
    port: int = Field(8080, ge=1, le=65535)
    # The shared sign-in token (constant-time compared); the operator gives a name at sign-in.
    token: SecretStr | None = None
    token_file: Path | None = None  # alternative: the token from a (secret) file; empty: no token
    # Off by default. A header naming the operator, set by an authenticating reverse proxy; taken only
    # from a client address in trusted_proxies (anyone else could set it).
    trusted_proxy_header: str | None = None
    trusted_proxies: Annotated[list[str], NoDecode] = ["127.0.0.1", "::1"]
    public_read: bool = False  # True: pages readable without signing in (writing still needs it)
    secure_cookies: bool = False  # True when served over HTTPS (the session cookie is then Secure)
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    sign_ins_per_minute: int = Field(10, ge=1, le=1000)  # failed sign-ins per client address
    # Memory is bounded: what the console keeps of what it reads.
    stations_max: int = Field(64, ge=1, le=10_000)
    verdicts_per_station: int = Field(200, ge=1, le=100_000)
    classes_max: int = Field(256, ge=1, le=100_000)  # counted classes; more are counted as "(other)"
    evidence_max: int = Field(200, ge=1, le=100_000)  # rejects and reviews kept with their image and map
    evidence_max_bytes: int = Field(256 << 20, ge=1 << 20, le=16 << 30)
    reports_max: int = Field(2000, ge=1, le=1_000_000)
    feedback_max: int = Field(10_000, ge=1, le=10_000_000)
    models_history: int = Field(100, ge=1, le=100_000)
    backlog_per_partition: int = Field(500, ge=0, le=1_000_000)  # records read back at start
    max_image_pixels: int = Field(MAX_PIXELS, ge=64, le=MAX_PIXELS)
    max_report_bytes: int = Field(16 << 20, ge=1 << 10, le=256 << 20)  # a report file served from the store

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _address_list(cls, value: object) -> object:
        return comma_or_json_list(value)


class LabelsSettings(BaseModel):
    """``lineguard labels export``: feedback (and its frames) -> an MVTec-layout labelled set."""

    # A frames store, <frames_dir>/<frame id>.png: the console saves there the frame of every feedback
    # it has the image of; export reads it first, then the defects and frames topics while retained.
    frames_dir: Path | None = None
    # Confirmed normals (export --collect-normals): passes with a normalised score at most this (the
    # threshold is 0.5), a sample of at most normals_per_class per class.
    normal_below: float = Field(0.2, gt=0, lt=0.5)
    normals_per_class: int = Field(50, ge=1, le=100_000)
    read_timeout_s: float = Field(120.0, gt=0, le=86_400)  # reading one topic to its end


class ShadowSettings(BaseModel):
    """``lineguard shadow``: a candidate model scores frames beside the serving one, in its own consumer
    group, and a report compares the two (docs/operations.md, "Roll a model out, and back")."""

    group_id: str = "lineguard-shadow"  # never the scorer's group: refused at start
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: int = Field(50, ge=0, le=10_000)
    max_frames: int = Field(100_000, ge=1, le=10_000_000)  # a run ends after scoring this many
    torch_threads: int = Field(1, ge=1, le=256)
    # Serving verdicts are read from this long before the first frame's record time (clock skew
    # between cameras and scorers), and, after the last frame, waited for this long at most.
    join_slack_s: float = Field(120.0, ge=0, le=86_400)
    join_wait_s: float = Field(30.0, ge=0, le=3600)
    read_timeout_s: float = Field(120.0, gt=0, le=86_400)  # reading a topic to its end
    report_dir: Path = Path("var/shadow")  # <report_dir>/<candidate>-<time>/report.json and .html
    changed_frames_listed: int = Field(200, ge=0, le=100_000)  # changed decisions listed in a report


class PromotionSettings(BaseModel):
    """``lineguard promote`` (what a shadow report must show), ``rollback`` and ``announce`` (the
    history), and refit proposals (``lineguard loop check``)."""

    min_frames_compared: int = Field(500, ge=1)  # frames with both verdicts
    min_agreement: float = Field(0.95, ge=0, le=1)  # share of compared frames with the same decision
    # Rates on frames operators labelled (feedback): the candidate's minus the serving model's.
    max_escape_rate_increase: float = Field(0.0, ge=0, le=1)  # labelled defects passed
    max_false_reject_rate_increase: float = Field(0.0, ge=0, le=1)  # labelled goods not passed
    # Frames the serving model passed, the candidate would not, and no operator called defective,
    # as a share of compared frames: false rejects the labels cannot show yet.
    max_added_reject_rate: float = Field(0.01, ge=0, le=1)
    min_labelled_defects: int = Field(0, ge=0)  # fewer: refused (0: escapes compared where labels exist)
    min_labelled_goods: int = Field(0, ge=0)
    max_report_age_h: float = Field(72.0, gt=0, le=24 * 365)
    # The Ed25519 key `promote` and `rollback` sign with (`lineguard model keygen`); --signing-key
    # overrides it. Neither: they refuse to announce unless told --unsigned.
    signing_key: Path | None = None
    # Announcements go to `models` and `model-history` in one transaction, under this id prefix.
    transactional_id_prefix: str = "lineguard-announce"
    history_timeout_s: float = Field(60.0, gt=0, le=3600)  # reading the history to its end
    # A refit is proposed for a class when operators confirmed this many normals (feedback "good" on
    # the serving model's verdicts, plus a staging set's sampled normals) or labelled this many
    # defects (0: defects alone never propose one).
    refit_min_normals: int = Field(50, ge=1, le=1_000_000)
    refit_min_defects: int = Field(10, ge=0, le=1_000_000)
    refit_check_interval_s: float = Field(300.0, ge=1, le=86_400)  # `lineguard loop check --watch`


class ClaimCheckSettings(BaseModel):
    """The claim-check store (``shared/frames_store.py`` ``ClaimStore``, docs/operations.md "Large
    frames"): frames too large for the wire go there and travel as a reference."""

    # A folder (local, or a network mount at the same path on every host), file://..., or an object
    # store through its fsspec plug-in (s3://bucket/prefix with s3fs). Unset: no store; producers
    # refuse frames too large for the wire and readers dead-letter references.
    url: str | None = None
    # fsspec storage options of the URL's filesystem (JSON), e.g. {"endpoint_url": "http://minio:9000"};
    # credentials belong in the environment the plug-in reads (AWS_ACCESS_KEY_ID, ...), not here.
    options: dict[str, Any] = {}
    # An image of more bytes than this (or more pixels than the wire's MAX_PIXELS) goes by reference.
    # 1 MiB: every inline MiB costs the scorer's event loop ~4 ms of Kafka reads and copies, a
    # referenced one ~1 ms of file read and sha256 (docs/benchmarks.md, "Camera-sized frames").
    inline_max_bytes: int = Field(1 << 20, ge=1024, le=MAX_IMAGE_BYTES)
    # The largest stored frame written or read, and the largest a reader decodes (the scorer decodes it
    # reduced to its model's input: JPEG DCT-scaled; PNG and raw whole, then box-reduced).
    max_frame_bytes: int = Field(MAX_FILE_BYTES, ge=1024, le=MAX_FILE_BYTES)
    max_frame_pixels: int = Field(MAX_REFERENCED_PIXELS, ge=64, le=MAX_REFERENCED_PIXELS)
    fetch_attempts: int = Field(3, ge=1, le=10)  # reads of a store that does not answer, per frame
    # Claim checks are kept at least this long: the defects topic's 3 days, so every defect event on
    # the topic still finds its frame. `lineguard claim-check gc` (hourly from cron) deletes older hours.
    retention_s: float = Field(3 * 86_400.0, ge=3600, le=365 * 86_400)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    kafka_bootstrap: str | None = None
    topic_prefix: str = "lineguard"
    log_level: str = "INFO"
    metrics_port: int = Field(0, ge=0, le=65535)  # 0: no HTTP metrics endpoint
    otel_exporter: str = "none"  # none | console | otlp

    kafka: KafkaSettings = KafkaSettings()
    broker: BrokerSettings = BrokerSettings()
    scorer: ScorerSettings = ScorerSettings()
    camera_sim: CameraSimSettings = CameraSimSettings()
    camera_gateway: CameraGatewaySettings = CameraGatewaySettings()
    plc_bridge: PlcBridgeSettings = PlcBridgeSettings()
    alerts: AlertsSettings = AlertsSettings()
    explainer: ExplainerSettings = ExplainerSettings()
    console: ConsoleSettings = ConsoleSettings()
    labels: LabelsSettings = LabelsSettings()
    shadow: ShadowSettings = ShadowSettings()
    promotion: PromotionSettings = PromotionSettings()
    claim_check: ClaimCheckSettings = ClaimCheckSettings()

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


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CoreOptions = TypeVar("CoreOptions", bound="DataclassInstance")


def from_section(cls: type[CoreOptions], section: BaseModel) -> CoreOptions:
    """A service core's options (a dataclass) from its settings section: every field the section has
    under the same name; the dataclass's other fields keep their defaults."""
    return cls(**section_fields(section, cls))


def section_fields(section: BaseModel, cls: type) -> dict[str, Any]:
    """The values of ``section``'s fields that the dataclass ``cls`` has under the same names."""
    return section.model_dump(include={f.name for f in dataclasses.fields(cls)})


def load_settings() -> Settings:
    """The settings from the environment; a ``ConfigError`` names every invalid variable, one a line."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            var = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{var}: {err['msg']}")
        raise config_error(*lines) from None


def config_error(*problems: str) -> ConfigError:
    """The one shape of a configuration error: a heading, then one indented line per problem."""
    return ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
