"""Outgoing HTTPS always verifies; a CA file that cannot be used is a configuration error."""

import ssl
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.tls import client_context
from tests.support.tls import make_pki


def test_verification_is_always_on(tmp_path: Path) -> None:
    for context in (client_context(None, "X"), client_context(make_pki(tmp_path).ca_file, "X")):
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_an_unusable_ca_file_names_its_setting(tmp_path: Path) -> None:
    (tmp_path / "not-a-ca.pem").write_text("not a certificate")
    for ca_file in (tmp_path / "missing.pem", tmp_path / "not-a-ca.pem"):
        with pytest.raises(ConfigError, match="LINEGUARD_ALERTS__CA_FILE: cannot use the CA file"):
            client_context(ca_file, "LINEGUARD_ALERTS__CA_FILE")
