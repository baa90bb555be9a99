"""Model directories on disk: confined to a models root, every file listed and hashed, each read once
into memory (the bytes that were hashed are the bytes that are parsed), sizes bounded before reading."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.engine import artifacts
from shared.engine.artifacts import manifest_digest, read_artifact, read_manifest, write_artifact
from shared.errors import ArtifactError

FILES = {"a.bin": b"alpha" * 10, "b.bin": b"beta" * 10}


def make_artifact(path: Path, files: dict[str, bytes] = FILES) -> Path:
    def write(folder: Path) -> None:
        for name, data in files.items():
            (folder / name).write_bytes(data)

    write_artifact(path, {"model_version": "v1"}, write)
    return path


def reseal(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest and give it a matching digest, as a forger who rewrites it would."""
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def test_every_listed_file_is_read_once_into_memory_and_nothing_else(root: Path) -> None:
    model = make_artifact(root / "v1")
    (model / "notes.txt").write_text("not listed")
    artifact = read_artifact(model, root=root)
    assert artifact.read("a.bin") == FILES["a.bin"] and artifact.read("b.bin") == FILES["b.bin"]
    assert set(artifact.contents) == set(FILES)
    assert read_manifest(model)["model_version"] == "v1"
    # What was hashed is what the loader gets, whatever happens to the files afterwards.
    (model / "a.bin").write_bytes(b"changed after the check")
    assert artifact.read("a.bin") == FILES["a.bin"]
    with pytest.raises(ArtifactError, match=r"notes\.txt.*not listed"):
        artifact.read("notes.txt")


def test_a_path_inside_the_root_is_accepted_relative_or_absolute(root: Path) -> None:
    model = make_artifact(root / "line-a" / "v1")
    assert read_artifact("line-a/v1", root=root).path == model.resolve()
    assert read_artifact(model, root=root).path == model.resolve()


@pytest.mark.parametrize("shape", ["relative", "absolute"])
def test_dot_dot_is_refused_even_when_it_would_land_inside(root: Path, shape: str) -> None:
    make_artifact(root / "v1")
    path = "v1/../v1" if shape == "relative" else str(root / "v1" / ".." / "v1")
    with pytest.raises(ArtifactError, match=r"'\.\.'"):
        read_artifact(path, root=root)
    with pytest.raises(ArtifactError, match=r"'\.\.'"):
        read_artifact(root / "v1" / ".." / "v1")


def test_a_directory_outside_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = make_artifact(tmp_path / "elsewhere" / "v1")
    with pytest.raises(ArtifactError, match="outside the models root"):
        read_artifact(outside, root=root)
    with pytest.raises(ArtifactError, match="outside the models root"):
        read_artifact(root, root=root)  # the root itself is no model


def test_a_symlink_out_of_the_root_is_refused_and_one_within_it_is_followed(
    root: Path, tmp_path: Path
) -> None:
    outside = make_artifact(tmp_path / "elsewhere" / "v1")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match="outside the models root"):
        read_artifact("escape", root=root)
    inside = make_artifact(root / "v2")
    (root / "current").symlink_to(inside, target_is_directory=True)
    assert read_artifact("current", root=root).path == inside.resolve()


def test_a_symlinked_file_inside_the_artifact_is_refused(root: Path, tmp_path: Path) -> None:
    model = make_artifact(root / "v1")
    twin = tmp_path / "a.bin"
    twin.write_bytes(FILES["a.bin"])  # the same bytes: only the link itself is wrong
    (model / "a.bin").unlink()
    (model / "a.bin").symlink_to(twin)
    with pytest.raises(ArtifactError, match=r"a\.bin .*symbolic link"):
        read_artifact(model, root=root)


@pytest.mark.timeout(20)
def test_a_listed_name_that_is_not_a_regular_file_is_refused_without_blocking(root: Path) -> None:
    model = make_artifact(root / "v1")
    (model / "b.bin").unlink()
    os.mkfifo(model / "b.bin")  # opening a FIFO for reading would wait for a writer forever
    with pytest.raises(ArtifactError, match=r"b\.bin .*not a regular file"):
        read_artifact(model, root=root)


def test_a_huge_manifest_is_refused_by_its_size(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_artifact(root / "v1")
    monkeypatch.setattr(artifacts, "MAX_MANIFEST_BYTES", 4096)
    (model / "manifest.json").write_text(" " * 5000 + "{}")
    with pytest.raises(ArtifactError, match=r"manifest\.json is 5002 bytes, over the limit of 4096"):
        read_artifact(model, root=root)


def test_files_over_the_size_budget_are_refused(root: Path) -> None:
    model = make_artifact(root / "v1")
    with pytest.raises(ArtifactError, match="over the limit"):
        read_artifact(model, root=root, max_bytes=60)  # a.bin is 50 bytes, b.bin 40


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_a_manifest_are_refused(root: Path, token: str) -> None:
    model = make_artifact(root / "v1")
    text = (model / "manifest.json").read_text().replace('"model_version": "v1"', f'"threshold": {token}')
    (model / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match="not a finite number"):
        read_artifact(model, root=root)


def test_a_deeply_nested_manifest_is_refused_cleanly(root: Path) -> None:
    model = make_artifact(root / "v1")
    (model / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ArtifactError, match="manifest"):
        read_artifact(model, root=root)


@pytest.mark.parametrize(
    "listing",
    [
        {"../a.bin": "0" * 64},
        {"sub/a.bin": "0" * 64},
        {".hidden": "0" * 64},
        {"manifest.json": "0" * 64},
        {"a.bin": "not a digest"},
        {"a.bin": 7},
        {},
        [],
    ],
)
def test_an_invalid_file_listing_is_refused(root: Path, listing: Any) -> None:
    model = make_artifact(root / "v1")
    reseal(model, lambda manifest: manifest.update(files=listing))
    with pytest.raises(ArtifactError, match=r"lists|files"):
        read_artifact(model, root=root)


def test_missing_changed_and_unlisted_things_are_refused(root: Path) -> None:
    model = make_artifact(root / "v1")
    with pytest.raises(ArtifactError, match="does not exist"):
        read_artifact(root / "nothing-here", root=root)
    (root / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        read_artifact(root / "empty", root=root)
    (model / "a.bin").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"a\.bin .*sha256"):
        read_artifact(model, root=root)
    other = make_artifact(root / "v2")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model_version"] = "v3"  # changed without a new digest
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="modified"):
        read_artifact(other, root=root)
    (other / "b.bin").unlink()
    reseal(other, lambda m: None)
    with pytest.raises(ArtifactError, match=r"missing b\.bin"):
        read_artifact(other, root=root)


def test_a_promised_manifest_digest_is_checked_before_any_other_file_is_read(root: Path) -> None:
    model = make_artifact(root / "v1")
    digest = read_manifest(model)["manifest_sha256"]
    assert read_artifact(model, root=root, manifest_sha256=digest).manifest["manifest_sha256"] == digest
    (model / "b.bin").unlink()
    os.mkfifo(model / "b.bin")  # reading it would fail otherwise: the digest must fail first
    with pytest.raises(ArtifactError, match="not the announced") as refused:
        read_artifact(model, root=root, manifest_sha256="0" * 64)
    assert refused.value.reason == "digest_mismatch"
