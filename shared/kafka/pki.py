"""A private certificate authority for Kafka's TLS, made with ``cryptography``.

Kafka reads PEM natively (``ssl.keystore.type=PEM``): the broker's key store is one PEM file, its
unencrypted PKCS#8 key followed by its certificate chain, readable by the owner only; the trust store
is the CA certificate. Keys are ECDSA P-256 (what TLS 1.2/1.3 and Java both handle well and fast).

A broker certificate names every host clients connect by (``subjectAltName``: DNS names and IP
addresses), so clients verify the hostname; it serves both as the TLS server certificate and as the
broker's own client certificate on its mutual-TLS listeners, where its common name is its principal.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 397  # what public CAs may issue at most; renewed by `kafka up --secure` when near expiry
RENEW_WITHIN_DAYS = 30


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A key usage extension allowing only ``allowed`` (names of ``x509.KeyUsage``'s flags)."""
    unknown = set(allowed) - set(_KEY_USAGES)
    if unknown:
        raise ValueError(f"unknown key usages {sorted(unknown)}")
    return x509.KeyUsage(**{usage: usage in allowed for usage in _KEY_USAGES})


def new_ca(common_name: str, days: int = CA_DAYS) -> Issued:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, certificate)


def issue(ca: Issued, common_name: str, hostnames: Sequence[str], days: int = CERT_DAYS) -> Issued:
    """A certificate signed by ``ca`` for TLS servers and clients, naming ``hostnames`` (DNS names or
    IP addresses) as subject alternative names."""
    if not hostnames:
        raise ValueError("a certificate needs at least one hostname")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.certificate.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hostnames]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature", "key_agreement"), critical=True)  # ECDHE, ECDSA
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, certificate)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (what Kafka's PEM key store reads without a key password);
    it is protected by its file's mode, like the password files."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def keystore_pem(issued: Issued, ca: x509.Certificate) -> bytes:
    """A PEM key store: the key, then the certificate chain (leaf first)."""
    return key_pem(issued.key) + certificate_pem(issued.certificate) + certificate_pem(ca)


def load_issued(key_file: Path, certificate_file: Path) -> Issued:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: not an EC private key")
    return Issued(key, x509.load_pem_x509_certificate(certificate_file.read_bytes()))


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate in a PEM file (a key store's leaf certificate)."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def needs_renewal(
    certificate: x509.Certificate, hostnames: Sequence[str], within_days: int = RENEW_WITHIN_DAYS
) -> bool:
    """True when the certificate expires within ``within_days`` or does not name every host."""
    if certificate.not_valid_after_utc - _now() < datetime.timedelta(days=within_days):
        return True
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    return not {_general_name(h) for h in hostnames} <= set(san)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically with ``mode`` from the first byte on (never briefly world-readable):
    a temporary file in the same folder, created with the mode, then renamed over ``path``. A file
    it replaces keeps its owner where we may set it (root replacing a service's password file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        owner: tuple[int, int] | None = (path.stat().st_uid, path.stat().st_gid)
    except FileNotFoundError:
        owner = None
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.getuid(), os.getgid()):
            with contextlib.suppress(PermissionError):
                os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
