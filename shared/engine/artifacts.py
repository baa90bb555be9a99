"""Versioned model directories: ``manifest.json`` + safetensors + faiss index files.

Every file's sha256 is listed in the manifest, and the manifest carries a digest of its own
canonical JSON, so a changed byte anywhere is refused before anything is parsed further. Nothing
is pickled. (The digests detect corruption and tampering by anyone who does not also rewrite the
manifest; they are not a signature: announcements are signed, see docs/operations.md.) Saving
writes a temporary sibling directory and renames it into place, so a reader never sees half an
artifact.

Reading (``read_artifact``) opens the directory once and every listed file once through that
directory's handle, never following a symlink inside it: each file is read whole into memory and
hashed, and those same bytes are what the loader parses (``VerifiedArtifact.read``), so nothing can
change a file between its check and its use. Given a models ``root``, the directory must lie inside
it once every symlink on the way is resolved. Sizes are bounded before anything is read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from shared.engine.backbones import file_sha256
from shared.errors import ArtifactError

FORMAT_NAME = "lineguard-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

MAX_MANIFEST_BYTES = 8 << 20  # a manifest holds settings and calibration scores: kilobytes to megabytes
MAX_ARTIFACT_FILES = 4096
MAX_ARTIFACT_BYTES = 16 << 30  # every listed file together (they are all held in memory while loading)
_MAX_NAME = 255
_HEX = frozenset("0123456789abcdef")


def manifest_digest(manifest: dict[str, Any]) -> str:
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_sha256_hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def write_artifact(
    path: str | Path,
    manifest: dict[str, Any],
    write_files: Callable[[Path], None],
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``write_files``' output plus the manifest to ``path`` atomically; returns the manifest."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} already exists; choose a new directory or allow overwriting")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write_files(staging)
        manifest = dict(manifest)
        manifest["format"] = FORMAT_NAME
        manifest["format_version"] = FORMAT_VERSION
        manifest["files"] = {item.name: file_sha256(item) for item in sorted(staging.iterdir())}
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)
        if target.exists():
            retired = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


@dataclass(frozen=True)
class VerifiedArtifact:
    """A model directory as read: its manifest and the bytes of every file it lists, each verified."""

    path: Path  # the directory, every symlink resolved
    manifest: dict[str, Any]
    contents: Mapping[str, bytes]  # file name -> the bytes whose sha256 matched the manifest

    def read(self, name: str) -> bytes:
        """A listed file's verified bytes (the only way a loader gets at a file)."""
        try:
            return self.contents[name]
        except KeyError:
            raise ArtifactError(
                f"{self.path} needs {name}, which its manifest has not listed; refusing it"
            ) from None


def read_artifact(
    path: str | Path,
    *,
    root: str | Path | None = None,
    manifest_sha256: str | None = None,
    max_bytes: int = MAX_ARTIFACT_BYTES,
) -> VerifiedArtifact:
    """Read and verify a model directory; with ``root``, it must lie inside that folder.

    A relative ``path`` is taken relative to ``root``. ``..`` is refused anywhere in the path.
    ``manifest_sha256``: the manifest digest the caller was promised (a signed announcement's),
    checked before any other file is read. Raises ``ArtifactError`` (reason ``outside_models_root``
    for a confinement failure, ``digest_mismatch`` for another manifest than the promised one).
    """
    with _open_directory(path, root) as (directory, handle):
        manifest = _parse_manifest(_read_file(handle, directory, MANIFEST, MAX_MANIFEST_BYTES), directory)
        if manifest_sha256 is not None and manifest["manifest_sha256"] != manifest_sha256:
            raise ArtifactError(
                f"the manifest of {directory} has digest {manifest['manifest_sha256']}, "
                f"not the announced {manifest_sha256}",
                reason="digest_mismatch",
            )
        listed = _listed_files(manifest, directory)
        contents: dict[str, bytes] = {}
        budget = max_bytes
        for name, expected in listed.items():
            data = _read_file(handle, directory, name, budget)
            budget -= len(data)
            if hashlib.sha256(data).hexdigest() != expected:
                raise ArtifactError(
                    f"{name} in {directory} does not match its sha256 in the manifest; refusing it"
                )
            contents[name] = data
    return VerifiedArtifact(directory, manifest, MappingProxyType(contents))


def read_manifest(path: str | Path, *, root: str | Path | None = None) -> dict[str, Any]:
    """Read and verify a model directory's manifest and every file it lists."""
    return read_artifact(path, root=root).manifest


def confined_path(path: str | Path, root: str | Path | None) -> Path:
    """``path`` with every symlink resolved, after checking it has no ``..`` and, given a ``root``,
    that it lies strictly inside the resolved root (a relative path is relative to the root)."""
    raw = os.fspath(path)
    if "\x00" in raw:
        raise ArtifactError(f"model path {raw!r} contains a NUL byte", reason="outside_models_root")
    if ".." in Path(raw).parts:
        raise ArtifactError(f"model path {raw!r} contains '..'; refusing it", reason="outside_models_root")
    if root is None:
        return Path(os.path.realpath(raw))
    real_root = Path(os.path.realpath(root))
    if not real_root.is_dir():
        raise ArtifactError(f"the models root {root} is not a directory", reason="outside_models_root")
    candidate = Path(raw) if Path(raw).is_absolute() else real_root / raw
    real = Path(os.path.realpath(candidate))
    if real_root not in real.parents:
        raise ArtifactError(
            f"model path {raw!r} resolves to {real}, outside the models root {real_root}",
            reason="outside_models_root",
        )
    return real


@contextlib.contextmanager
def _open_directory(path: str | Path, root: str | Path | None) -> Iterator[tuple[Path, int]]:
    directory = confined_path(path, root)
    try:
        handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ArtifactError(f"model directory {path} does not exist") from None
    except NotADirectoryError:
        raise ArtifactError(f"{path} is not a directory") from None
    except OSError as exc:
        raise ArtifactError(f"model directory {path} cannot be opened ({exc.strerror})") from None
    try:
        if root is not None:
            # Between resolving and opening, a folder on the way could have become a symlink:
            # check where the handle really points, since every read goes through it.
            _check_handle_inside(handle, directory, Path(os.path.realpath(root)))
        yield directory, handle
    finally:
        os.close(handle)


def _check_handle_inside(handle: int, directory: Path, real_root: Path) -> None:
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{handle}"))
    except OSError:  # no /proc: the handle must be the very directory that was checked
        status, expected = os.fstat(handle), os.stat(directory)
        if (status.st_dev, status.st_ino) != (expected.st_dev, expected.st_ino):
            raise ArtifactError(
                f"{directory} changed while it was opened", reason="outside_models_root"
            ) from None
        return
    if real_root not in opened.parents:
        raise ArtifactError(
            f"{directory} was moved outside the models root {real_root} while it was opened",
            reason="outside_models_root",
        )


def _read_file(handle: int, directory: Path, name: str, limit: int) -> bytes:
    """One file of the directory, read whole: a regular file, not a symlink, at most ``limit`` bytes."""
    try:
        # O_NONBLOCK: opening a FIFO planted under a listed name must not wait for a writer.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=handle)
    except FileNotFoundError:
        if name == MANIFEST:
            raise ArtifactError(f"{directory} is not a Lineguard model directory (no {MANIFEST})") from None
        raise ArtifactError(f"{directory} is missing {name}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(
                f"{name} in {directory} is a symbolic link; model files must be regular files"
            ) from None
        raise ArtifactError(f"{name} in {directory} cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle_file:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ArtifactError(f"{name} in {directory} is not a regular file")
        if status.st_size > limit:
            raise ArtifactError(f"{name} is {status.st_size} bytes, over the limit of {limit}")
        data = handle_file.read(limit + 1)
    if len(data) > limit:  # grew after fstat
        raise ArtifactError(f"{name} is over the limit of {limit} bytes")
    return data


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ArtifactError(f"{text} is not a finite number")
    return value


def _refuse_constant(text: str) -> float:
    raise ArtifactError(f"{text} is not a finite number")


def _parse_manifest(data: bytes, directory: Path) -> dict[str, Any]:
    where = directory / MANIFEST
    try:
        manifest = json.loads(
            data.decode("utf-8"), parse_float=_finite_float, parse_constant=_refuse_constant
        )
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}; refusing it") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where} is not valid JSON ({exc}); the artifact is damaged") from None
    except RecursionError:
        raise ArtifactError(f"{where} is nested too deeply to be a manifest") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ArtifactError(f"{where} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{where} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"model format version {manifest.get('format_version')!r} is not supported "
            f"(this Lineguard reads version {FORMAT_VERSION}); refit the model"
        )
    try:
        digest = manifest_digest(manifest)
    except (RecursionError, ValueError):
        raise ArtifactError(f"{where} cannot be digested; refusing it") from None
    if manifest.get("manifest_sha256") != digest:
        raise ArtifactError(f"{where} was modified after it was written (digest mismatch); refusing it")
    return manifest


def _listed_files(manifest: dict[str, Any], directory: Path) -> dict[str, str]:
    where = directory / MANIFEST
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{where} lists no files")
    if len(files) > MAX_ARTIFACT_FILES:
        raise ArtifactError(f"{where} lists {len(files)} files, over the limit of {MAX_ARTIFACT_FILES}")
    for name, expected in files.items():
        if (
            not name
            or len(name) > _MAX_NAME
            or name == MANIFEST
            or name.startswith(".")
            or any(c in name for c in "/\\\x00")
        ):
            raise ArtifactError(f"{where} lists an invalid file name {name[:80]!r}")
        if not is_sha256_hex(expected):
            raise ArtifactError(f"{where} lists {name} with {str(expected)[:80]!r}, not a sha256 digest")
    return files
