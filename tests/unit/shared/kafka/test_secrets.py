"""The secrets folder of a secure deployment: made once, owner-only, env files that point at them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.cli import main
from shared.kafka import pki
from shared.kafka.principals import PRINCIPAL_NAMES
from shared.kafka.secure_broker import SecretsLayout, env_file_text, init_secrets, read_env_file
from shared.settings import Settings, load_settings


def test_init_makes_every_secret_once_owner_only(tmp_path: Path) -> None:
    layout = SecretsLayout(tmp_path / "kafka")
    made = init_secrets(layout, ["kafka", "localhost"])
    assert len(made) == 2 + len(PRINCIPAL_NAMES)
    assert stat.S_IMODE(layout.root.stat().st_mode) == 0o700
    for path in (layout.ca_key, layout.keystore, *(layout.password_file(n) for n in PRINCIPAL_NAMES)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    passwords = {n: layout.password_file(n).read_text() for n in PRINCIPAL_NAMES}
    assert len(set(passwords.values())) == len(PRINCIPAL_NAMES) and all(
        len(p) >= 40 for p in passwords.values()
    )
    keystore = layout.keystore.read_bytes()

    assert init_secrets(layout, ["kafka", "localhost"]) == []  # idempotent
    assert layout.keystore.read_bytes() == keystore
    # A new name renews the broker certificate, from the same CA; passwords stay.
    made = init_secrets(layout, ["kafka", "localhost", "kafka.plant.example"])
    assert made == [f"broker certificate for kafka, localhost, kafka.plant.example in {layout.keystore}"]
    assert not pki.needs_renewal(pki.load_certificate(layout.keystore), ["kafka.plant.example"])
    assert pki.load_certificate(layout.keystore).issuer == pki.load_certificate(layout.ca_cert).subject
    assert {n: layout.password_file(n).read_text() for n in PRINCIPAL_NAMES} == passwords


def test_an_env_file_loads_as_that_principals_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = SecretsLayout(tmp_path / "with space")
    init_secrets(layout, ["localhost"], ["camera"])
    text = env_file_text(Settings(topic_prefix="plant7"), layout, "camera", "localhost:9092")
    path = tmp_path / "camera.env"
    path.write_text(text)
    variables = read_env_file(path)
    assert layout.password_file("camera").read_text() not in text  # a path to the password, never it
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.kafka.sasl_username == "camera" and settings.topic_prefix == "plant7"
    assert settings.kafka.sasl_password_file == layout.password_file("camera").resolve()
    assert settings.kafka.ssl_ca_file == layout.ca_cert.resolve() and settings.bootstrap == "localhost:9092"


def test_the_acl_table_and_init_secrets_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kafka", "acls"]) == 0
    table = capsys.readouterr().out
    assert "User:camera: publishes camera frames\n  WRITE topic lineguard.frames\n" in table
    assert "WRITE transactional_id lineguard-scorer-*" in table
    assert main(["kafka", "init-secrets", "--out", str(tmp_path / "s"), "--hostname", "kafka"]) == 0
    out = capsys.readouterr().out
    assert "password of admin" in out and (tmp_path / "s" / "passwords" / "admin").is_file()
    assert main(["kafka", "provision", "--secrets", str(tmp_path / "none")]) == 2
    assert "no password file for camera" in capsys.readouterr().err
