"""Signed model announcements: Ed25519 keys, the signed bytes, verification, and replay order.

An operator makes a key pair once (``lineguard model keygen``), keeps the private key and gives
the public key to every scorer (``LINEGUARD_SCORER__TRUSTED_KEYS``). ``lineguard announce
--signing-key`` signs ``signed_bytes``: every field of the announcement but the signature, each
length-prefixed under a context string naming the schema and its version, so no field can be
changed or moved into another. A scorer that trusts at least one key takes only announcements
signed by one of them, and only ones newer than the newest it has taken (``AnnouncementGate``): a
roll-back is a new announcement of an older model, with a new timestamp and signature, so a replay
of a recorded announcement never goes back in time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import ConfigError, ModelRefused
from shared.messages.schemas import ANNOUNCEMENT_KEY_ID_LEN, ModelAnnouncement

SIGNING_CONTEXT = b"lineguard.ModelAnnouncement/v2\n"
SIGNED_FIELDS = ("model_version", "path", "announced_at", "sha256", "key_id")
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
MAX_KEY_FILE_BYTES = 64 << 10
DEFAULT_MAX_SKEW_NS = 300 * 10**9
_KEY_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_SETTING = "LINEGUARD_SCORER__TRUSTED_KEYS"


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A key's short id (hex of its raw bytes' sha256): names the key an announcement was signed with."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:ANNOUNCEMENT_KEY_ID_LEN]


@dataclass(frozen=True)
class KeyFiles:
    private: Path
    public: Path
    key_id: str


def generate_signing_key(out_dir: Path, name: str = "model-signing") -> KeyFiles:
    """A new Ed25519 key pair: ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub``; never overwrites."""
    if not _KEY_NAME.match(name):
        raise ConfigError(f"key name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - (no leading dot)")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path, public_path = out_dir / f"{name}{PRIVATE_SUFFIX}", out_dir / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise ConfigError(f"{path} exists; refusing to overwrite a key (choose another --name or --out)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created owner-only in one step (O_EXCL: no race with another writer, no following a link).
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    os.chmod(public_path, 0o644)
    return KeyFiles(private_path, public_path, key_id_of(key.public_key()))


def _read_key_file(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{path} is too large to be a key file")
    return data


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The private key in ``path``; refused if group or others may read it (as ssh does)."""
    try:
        mode = path.stat().st_mode
        data = _read_key_file(path)
    except OSError as exc:
        raise ConfigError(f"signing key {path} cannot be read ({exc.strerror})") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"signing key {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def _load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = _read_key_file(path)
    except OSError as exc:
        raise ConfigError(f"{_SETTING}: {path} cannot be read ({exc.strerror})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{_SETTING}: {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{_SETTING}: {path} is not an Ed25519 public key")
    return key


def load_trusted_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by id, from files and folders (each folder's ``*.pub``). A path that holds no usable
    key is a ``ConfigError``: a typo must never turn signature checks off."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        if path.is_dir():
            files = sorted(item for item in path.glob(f"*{PUBLIC_SUFFIX}") if item.is_file())
            if not files:
                raise ConfigError(f"{_SETTING}: folder {path} has no *{PUBLIC_SUFFIX} files")
        elif path.exists():
            files = [path]
        else:
            raise ConfigError(f"{_SETTING}: {path} does not exist")
        for item in files:
            key = _load_public_key(item)
            keys[key_id_of(key)] = key
    return keys


def signed_bytes(announcement: ModelAnnouncement) -> bytes:
    """What is signed: every field but the signature, each as ``name=<4-byte length><UTF-8 value>``."""
    parts = [SIGNING_CONTEXT]
    for name in SIGNED_FIELDS:
        value = str(getattr(announcement, name)).encode("utf-8")
        parts.append(name.encode() + b"=" + len(value).to_bytes(4, "big") + value)
    return b"".join(parts)


def sign_announcement(announcement: ModelAnnouncement, key: Ed25519PrivateKey) -> ModelAnnouncement:
    """``announcement`` with the key's id and its signature."""
    with_id = dataclasses.replace(announcement, key_id=key_id_of(key.public_key()), signature=b"")
    return dataclasses.replace(with_id, signature=key.sign(signed_bytes(with_id)))


def verify_signature(announcement: ModelAnnouncement, trusted: Mapping[str, Ed25519PublicKey]) -> None:
    """Raise ``ModelRefused`` (reason ``unsigned``, ``unknown_key`` or ``bad_signature``) unless a
    trusted key signed exactly this announcement."""
    if not announcement.key_id:
        raise ModelRefused(
            "the announcement is not signed, and this scorer trusts signing keys", reason="unsigned"
        )
    key = trusted.get(announcement.key_id)
    if key is None:
        raise ModelRefused(
            f"the announcement is signed with key {announcement.key_id!r}, which this scorer does not trust",
            reason="unknown_key",
        )
    try:
        key.verify(announcement.signature, signed_bytes(announcement))
    except InvalidSignature:
        raise ModelRefused(
            f"the announcement's signature is not key {announcement.key_id}'s signature of its fields",
            reason="bad_signature",
        ) from None


class AnnouncementGate:
    """Which announcements a scorer takes: signed by a trusted key (when it has any), not from the
    future beyond ``max_skew_ns``, and newer than every announcement it has taken (``latest``)."""

    def __init__(
        self,
        trusted: Mapping[str, Ed25519PublicKey],
        *,
        max_skew_ns: int = DEFAULT_MAX_SKEW_NS,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.trusted = dict(trusted)
        self.max_skew_ns = max_skew_ns
        self.latest = -1  # announced_at of the newest announcement taken
        self._clock = clock

    @property
    def signed(self) -> bool:
        """Whether announcements must be signed (at least one trusted key)."""
        return bool(self.trusted)

    def check(self, announcement: ModelAnnouncement) -> None:
        """Raise ``ModelRefused`` if the announcement must not be taken; changes nothing."""
        if self.signed:
            verify_signature(announcement, self.trusted)
        ahead = announcement.announced_at - self._clock()
        if ahead > self.max_skew_ns:
            raise ModelRefused(
                f"the announcement is dated {ahead / 1e9:.0f} s ahead, more than the allowed clock skew",
                reason="future",
            )
        if announcement.announced_at <= self.latest:
            raise ModelRefused(
                f"the announcement (announced_at {announcement.announced_at}) is not newer than the last one "
                f"taken ({self.latest}): a replay, or announced out of order",
                reason="stale",
            )

    def admit(self, announcement: ModelAnnouncement) -> None:
        """``check`` it, then remember it as the newest taken."""
        self.check(announcement)
        self.latest = announcement.announced_at
