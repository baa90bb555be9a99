"""Versioned model directories: ``manifest.json`` + safetensors + faiss index files.

Every file's sha256 is listed in the manifest, and the manifest carries a digest of its own
canonical JSON, so a changed byte anywhere is refused before anything is parsed further. Nothing
is pickled. (The digests detect corruption and tampering by anyone who does not also rewrite the
manifest; they are not a signature.) Saving writes a temporary sibling directory and renames it
into place, so a reader never sees half an artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.engine.backbones import file_sha256
from shared.errors import ArtifactError

FORMAT_NAME = "lineguard-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def manifest_digest(manifest: dict[str, Any]) -> str:
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


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


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and verify a model directory's manifest and every file it lists."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{root} is not a Lineguard model directory (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{manifest_path} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"model format version {manifest.get('format_version')!r} is not supported "
            f"(this Lineguard reads version {FORMAT_VERSION}); refit the model"
        )
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise ArtifactError(
            f"{manifest_path} was modified after it was written (digest mismatch); refusing it"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{manifest_path} lists no files")
    for name, expected in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ArtifactError(f"{manifest_path} lists an invalid file name {name!r}")
        item = root / name
        if not item.is_file():
            raise ArtifactError(f"{root} is missing {name}")
        actual = file_sha256(item)
        if actual != expected:
            raise ArtifactError(f"{name} in {root} does not match its sha256 in the manifest; refusing it")
    return manifest
