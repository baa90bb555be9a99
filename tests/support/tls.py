"""A private certificate authority and a localhost server certificate, made with
``shared.kafka.pki``, for tests of clients that must verify TLS (the VLM and webhook clients)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from shared.kafka import pki


@dataclass(frozen=True)
class LocalPki:
    ca_file: Path  # PEM: the CA certificate clients are told to trust
    cert_file: Path  # PEM: the server certificate (localhost, 127.0.0.1), signed by the CA
    key_file: Path  # PEM: its private key

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_pki(directory: Path, name: str = "lineguard-test") -> LocalPki:
    """A fresh CA and a server certificate for localhost/127.0.0.1 under ``directory``, valid for a
    day, made by the same code as the Kafka deployment's (``shared.kafka.pki``)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(f"{name} CA", days=1)
    server = pki.issue(ca, "localhost", ["localhost", "127.0.0.1"], days=1)
    made = LocalPki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    made.ca_file.write_bytes(pki.certificate_pem(ca.certificate))
    made.cert_file.write_bytes(pki.certificate_pem(server.certificate))
    made.key_file.write_bytes(pki.key_pem(server.key))
    return made
