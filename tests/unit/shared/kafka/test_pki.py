"""The private CA: certificates that Python's TLS (like Kafka's) accepts for the names they carry."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from shared.kafka import pki


def _serve_once(context: ssl.SSLContext) -> tuple[int, threading.Thread]:
    """A TLS server on localhost that completes one handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def _write_keystore(tmp_path: Path, name: str, issued: pki.Issued, ca: pki.Issued) -> Path:
    path = tmp_path / name
    pki.write_private(path, pki.keystore_pem(issued, ca.certificate))
    return path


def test_a_broker_certificate_is_trusted_through_its_ca_for_its_names_only(tmp_path: Path) -> None:
    ca = pki.new_ca("test CA")
    broker = pki.issue(ca, "broker", ["localhost", "127.0.0.1"])
    keystore = _write_keystore(tmp_path, "broker.pem", broker, ca)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(keystore)  # key and chain from one PEM file, as Kafka reads it
    (tmp_path / "ca.pem").write_bytes(pki.certificate_pem(ca.certificate))

    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    port, thread = _serve_once(server)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.getpeercert()["subject"] == ((("commonName", "broker"),),)
        tls.send(b"x")
    thread.join(5)

    port, thread = _serve_once(server)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="mismatch"),
    ):
        client.wrap_socket(raw, server_hostname="kafka.example")
    thread.join(5)

    other = ssl.create_default_context(
        cadata=pki.certificate_pem(pki.new_ca("other CA").certificate).decode()
    )
    port, thread = _serve_once(server)
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLCertVerificationError):
        other.wrap_socket(raw, server_hostname="localhost")
    thread.join(5)


def test_certificates_are_ca_bounded_and_name_their_hosts() -> None:
    ca = pki.new_ca("test CA")
    leaf = pki.issue(ca, "broker", ["kafka", "10.0.0.7"], days=10_000)
    assert leaf.certificate.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    assert leaf.certificate.issuer == ca.certificate.subject
    names = leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kafka"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert not leaf.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_usage = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    leaf_usage = leaf.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign and not ca_usage.key_agreement
    assert leaf_usage.digital_signature and leaf_usage.key_agreement and not leaf_usage.key_cert_sign
    assert not leaf_usage.key_encipherment and not leaf_usage.crl_sign


def test_renewal_when_near_expiry_or_a_name_is_missing() -> None:
    ca = pki.new_ca("test CA")
    fresh = pki.issue(ca, "broker", ["localhost", "127.0.0.1"])
    assert not pki.needs_renewal(fresh.certificate, ["localhost"])
    assert pki.needs_renewal(fresh.certificate, ["localhost", "kafka"])
    short = pki.issue(ca, "broker", ["localhost"], days=pki.RENEW_WITHIN_DAYS - 1)
    assert pki.needs_renewal(short.certificate, ["localhost"])
    assert short.certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(
        days=1
    )


def test_private_files_are_owner_only_from_the_start_and_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    pki.write_private(path, b"one")
    pki.write_private(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary left behind


def test_keys_reload_from_their_pem(tmp_path: Path) -> None:
    ca = pki.new_ca("test CA")
    pki.write_private(tmp_path / "ca.key", pki.key_pem(ca.key))
    (tmp_path / "ca.pem").write_bytes(pki.certificate_pem(ca.certificate))
    again = pki.load_issued(tmp_path / "ca.key", tmp_path / "ca.pem")
    assert again.certificate == ca.certificate
    assert again.key.private_numbers() == ca.key.private_numbers()
    assert b"ENCRYPTED" not in pki.key_pem(ca.key) and b"BEGIN PRIVATE KEY" in pki.key_pem(ca.key)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another user")
def test_a_replaced_file_keeps_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "password"
    pki.write_private(path, b"old")
    os.chown(path, 10001, 10001)  # a service's password file, rotated by root
    pki.write_private(path, b"new")
    assert (path.stat().st_uid, path.stat().st_gid, path.read_bytes()) == (10001, 10001, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
