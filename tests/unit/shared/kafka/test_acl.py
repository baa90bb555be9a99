"""SCRAM credentials as Kafka stores them, and what the secure broker's configuration says."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from shared.kafka.acl import scram_credential, scram_format_argument
from shared.kafka.broker import BrokerTls, LocalBroker
from shared.settings import BrokerSettings, SaslMechanism


def test_the_salted_password_is_rfc_7677s() -> None:
    # RFC 7677 section 3: user "user", password "pencil"; the client proof of that exchange follows
    # from SaltedPassword alone, so matching it proves the arithmetic Kafka's server checks.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    credential = scram_credential("user", "pencil", SaslMechanism.SCRAM_SHA_256, 4096, salt=salt)
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    )
    client_key = hmac.new(credential.salted_password, b"Client Key", "sha256").digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message.encode(), "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    assert base64.b64encode(proof).decode() == "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


def test_a_format_argument_carries_salt_and_salted_password_never_the_password() -> None:
    credential = scram_credential("camera", "pa55-word", SaslMechanism.SCRAM_SHA_512)
    argument = scram_format_argument(credential)
    assert argument.startswith('SCRAM-SHA-512=[name=camera,iterations=8192,salt="')
    assert "pa55-word" not in argument
    salted = argument.split('saltedpassword="')[1].rstrip('"]')
    assert base64.b64decode(salted) == credential.salted_password and len(credential.salted_password) == 64
    assert "salted_password" not in repr(credential)  # never in a log line
    assert scram_credential("camera", "pa55-word", SaslMechanism.SCRAM_SHA_512).salt != credential.salt


def test_the_secure_broker_has_no_plaintext_listener_and_denies_by_default(tmp_path: Path) -> None:
    settings = BrokerSettings(port=9192, controller_port=9193, internal_port=9194, data_dir=tmp_path)
    tls = BrokerTls(keystore=tmp_path / "broker.pem", truststore=tmp_path / "ca.pem")
    props = dict(
        line.split("=", 1)
        for line in LocalBroker(settings, tls=tls).server_properties().splitlines()
        if "=" in line
    )
    assert props["listener.security.protocol.map"] == "CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL"
    assert "PLAINTEXT" not in props["listeners"] + props["advertised.listeners"]
    assert props["listeners"].count("localhost:") == 3  # nothing bound beyond this machine
    assert (
        props["listener.name.internal.ssl.client.auth"]
        == props["listener.name.controller.ssl.client.auth"]
        == "required"
    )
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:broker"
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256"
    assert not any("password" in key for key in props)  # the key store is protected by its mode
    plain = LocalBroker(settings).server_properties()
    assert "PLAINTEXT://localhost:9192" in plain and "authorizer" not in plain and "9194" not in plain
