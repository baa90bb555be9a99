"""The Kafka security settings: complete combinations load, half-configured ones are refused at start."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import SaslMechanism, SecurityProtocol, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LINEGUARD_"):
            monkeypatch.delenv(name)


SASL_USER = {"SASL_USERNAME": "u", "SASL_PASSWORD_FILE": "/p"}  # a complete SASL identity


def _load(monkeypatch: pytest.MonkeyPatch, **variables: str):  # type: ignore[no-untyped-def]
    for name, value in variables.items():
        monkeypatch.setenv(f"LINEGUARD_KAFKA__{name}", value)
    return load_settings()


def test_defaults_are_plaintext_scram_512_hostname_checked_one_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka = _load(monkeypatch).kafka
    assert kafka.security_protocol is SecurityProtocol.PLAINTEXT
    assert kafka.sasl_mechanism is SaslMechanism.SCRAM_SHA_512
    assert kafka.ssl_check_hostname is True
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (1, 1)


@pytest.mark.parametrize(
    "variables",
    [
        {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_USERNAME": "camera", "SASL_PASSWORD_FILE": "/p"},
        {
            "SECURITY_PROTOCOL": "SASL_SSL",
            "SASL_MECHANISM": "SCRAM-SHA-256",
            "SASL_USERNAME": "camera",
            "SASL_PASSWORD_FILE": "/p",
            "SSL_CA_FILE": "/ca.pem",
        },
        {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_USERNAME": "u", "SASL_PASSWORD_FILE": "/p"},
        {"SECURITY_PROTOCOL": "SSL"},
        {"SECURITY_PROTOCOL": "SSL", "SSL_CA_FILE": "/ca.pem", "SSL_CERT_FILE": "/c.pem"},
        {
            "SECURITY_PROTOCOL": "SSL",
            "SSL_CERT_FILE": "/c.pem",
            "SSL_KEY_FILE": "/k.pem",
            "SSL_KEY_PASSWORD_FILE": "/kp",
            "SSL_CHECK_HOSTNAME": "false",
        },
        {"REPLICATION_FACTOR": "3", "MIN_INSYNC_REPLICAS": "2"},
    ],
)
def test_complete_combinations_load(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    kafka = _load(monkeypatch, **variables).kafka
    assert kafka.security_protocol == variables.get("SECURITY_PROTOCOL", "PLAINTEXT")


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_SSL needs LINEGUARD_KAFKA__SASL_USERNAME"),
        (
            {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_USERNAME": "u"},
            "needs LINEGUARD_KAFKA__SASL_PASSWORD_FILE",
        ),
        (
            {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_PASSWORD_FILE": "/p"},
            "needs LINEGUARD_KAFKA__SASL_USERNAME",
        ),
        (SASL_USER, "SASL_USERNAME is set but"),
        ({"SECURITY_PROTOCOL": "SSL", "SASL_USERNAME": "u"}, "does not authenticate with SASL"),
        ({"SSL_CA_FILE": "/ca.pem"}, "SSL_CA_FILE is set but LINEGUARD_KAFKA__SECURITY_PROTOCOL=PLAINTEXT"),
        ({**SASL_USER, "SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SSL_CERT_FILE": "/c.pem"}, "does not use TLS"),
        (
            {"SECURITY_PROTOCOL": "SSL", "SSL_KEY_FILE": "/k.pem"},
            "SSL_KEY_FILE needs LINEGUARD_KAFKA__SSL_CERT_FILE",
        ),
        ({"SECURITY_PROTOCOL": "SSL", "SSL_KEY_PASSWORD_FILE": "/kp"}, "SSL_KEY_PASSWORD_FILE needs"),
        ({"SECURITY_PROTOCOL": "TLS"}, "LINEGUARD_KAFKA__SECURITY_PROTOCOL"),
        (
            {**SASL_USER, "SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "GSSAPI"},
            "LINEGUARD_KAFKA__SASL_MECHANISM",
        ),
        ({"REPLICATION_FACTOR": "2", "MIN_INSYNC_REPLICAS": "3"}, "no write could succeed"),
        ({"REPLICATION_FACTOR": "0"}, "LINEGUARD_KAFKA__REPLICATION_FACTOR"),
    ],
)
def test_half_configured_security_is_a_config_error_naming_the_variables(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        _load(monkeypatch, **variables)


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(monkeypatch, SECURITY_PROTOCOL="SASL_SSL", SSL_KEY_FILE="/k.pem")
    message = str(caught.value)
    for part in ("SASL_USERNAME", "SASL_PASSWORD_FILE", "SSL_KEY_FILE needs"):
        assert part in message
