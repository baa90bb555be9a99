"""Loading a model checks its manifest before trusting it: known backbones, allowed architecture
overrides, weights found only by hash, finite and present numbers, non-empty class lists, tensors
that match the classes and the backbone's features; and it parses exactly the bytes it hashed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.engine import persistence
from shared.engine.artifacts import manifest_digest
from shared.engine.fitting import fit_model
from shared.engine.model import InspectionModel
from shared.engine.persistence import load_model, save_model
from shared.engine.scorers.index import build_index
from shared.errors import ArtifactError
from shared.synthetic import render_sample
from tests.support.engine import VIT_SIZE, save_tiny_vit, synthetic_split, tiny_vit_config

CLASSES = ("fabric", "washer")


@pytest.fixture(scope="module")
def model(tiny_vit_weights: Path) -> InspectionModel:
    return fit_model(synthetic_split(CLASSES, 6, VIT_SIZE), tiny_vit_config(tiny_vit_weights, bank_size=200))


@pytest.fixture(scope="module")
def saved(model: InspectionModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model"
    save_model(model, path)
    return path


@pytest.fixture
def weights_dir(tiny_vit_weights: Path) -> Path:
    return tiny_vit_weights.parent


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "model"))


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [render_sample(p, rng, VIT_SIZE, "spot")[0] for p in CLASSES]


def raw_scores(model: InspectionModel) -> list[float]:
    return [r.raw_score for r in model.score_batch(frames())]


def reseal(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest and re-seal its digest (a forger's or a buggy writer's manifest)."""
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def rehash(path: Path, name: str) -> None:
    """Record a replaced file's new sha256 in the manifest (and re-seal it)."""
    import hashlib

    digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
    reseal(path, lambda m: m["files"].__setitem__(name, digest))


# ---- weights: only by hash, from the weights directory or the backbone's own local source --------


def test_weights_are_found_by_hash_in_the_weights_directory(
    model: InspectionModel, saved: Path, weights_dir: Path
) -> None:
    loaded = load_model(saved, weights_dir=weights_dir)
    assert raw_scores(loaded) == raw_scores(model)


def test_the_weight_path_a_manifest_records_is_never_opened(
    saved: Path, tiny_vit_weights: Path, tmp_path: Path
) -> None:
    # The recorded path exists and holds the right bytes, but it is the manifest's word, not a place
    # the operator configured: without a weights directory that holds the file, loading is refused.
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="weights directory") as refused:
        load_model(saved, weights_dir=empty)
    sha = json.loads((saved / "manifest.json").read_text())["backbone"]["weights_sha256"]
    assert sha in str(refused.value)
    with pytest.raises(ArtifactError, match="weights"):
        load_model(saved)
    # Named by its hash in the weights directory, it is found whatever the recorded name was.
    shutil.copyfile(tiny_vit_weights, empty / f"{sha}.safetensors")
    assert load_model(saved, weights_dir=empty).weights_sha256 == sha


def test_a_recorded_weight_name_cannot_leave_the_weights_directory(
    copy: Path, tiny_vit_weights: Path, tmp_path: Path
) -> None:
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (tmp_path / "secret.safetensors").write_bytes(tiny_vit_weights.read_bytes())
    reseal(copy, lambda m: m["backbone"].__setitem__("weights_path", "../secret.safetensors"))
    with pytest.raises(ArtifactError, match="weights"):
        load_model(copy, weights_dir=weights_dir)


def test_weights_of_another_hash_are_refused(saved: Path, tmp_path: Path) -> None:
    other = tmp_path / "weights"
    other.mkdir()
    save_tiny_vit(other / "tiny_dinov2.safetensors", seed=11)  # same name, other bytes
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(saved, weights_dir=other)


def test_the_weight_bytes_that_were_hashed_are_the_ones_parsed(
    model: InspectionModel,
    saved: Path,
    tiny_vit_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    local = weights_dir / tiny_vit_weights.name
    shutil.copyfile(tiny_vit_weights, local)
    real = persistence.read_weight_file

    def swap_after_reading(path: Path) -> bytes:
        data = real(path)
        save_tiny_vit(local, seed=12)  # replaced right after the check: must make no difference
        return data

    monkeypatch.setattr(persistence, "read_weight_file", swap_after_reading)
    assert raw_scores(load_model(saved, weights_dir=weights_dir)) == raw_scores(model)


def test_the_artifact_bytes_that_were_hashed_are_the_ones_parsed(
    model: InspectionModel, copy: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = persistence.read_artifact

    def tamper_after_reading(*args: Any, **kwargs: Any) -> Any:
        artifact = real(*args, **kwargs)
        for name in ("index_000.faiss", "index_001.faiss", "tensors.safetensors"):
            data = bytearray((copy / name).read_bytes())
            data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # zero the second half
            (copy / name).write_bytes(bytes(data))
        return artifact

    monkeypatch.setattr(persistence, "read_artifact", tamper_after_reading)
    assert raw_scores(load_model(copy, weights_dir=weights_dir)) == raw_scores(model)


# ---- manifest fields ----------------------------------------------------------------------------


def _set(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _delete(*keys: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        for one in changes:
            one(manifest)

    return change


BAD_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown backbone": (
        _both(_set("config", "backbone", value="resnet9000"), _set("backbone", "name", value="resnet9000")),
        "unknown backbone 'resnet9000'",
    ),
    "backbone name differs from the config": (
        _set("backbone", "name", value="dinov2_vitb14"),
        "backbone",
    ),
    "timm name of another model": (_set("backbone", "timm_name", value="resnet50"), "timm_name"),
    "arch override outside the allow-list": (
        _set("config", "arch_overrides", "checkpoint_path", value="/etc/passwd"),
        "arch_overrides.*checkpoint_path",
    ),
    "arch override of the wrong type": (
        _set("config", "arch_overrides", "embed_dim", value="96"),
        "arch_overrides.*embed_dim",
    ),
    "weights digest that is no digest": (_set("backbone", "weights_sha256", value="xyz"), "weights_sha256"),
    "absurd input size": (
        _both(_set("config", "input_size", value=100_000), _set("backbone", "input_size", value=100_000)),
        "input_size",
    ),
    "unknown config field": (_set("config", "evil", value=1), "evil"),
    "config field of the wrong type": (_set("config", "k", value="1"), r"config\.k"),
    "missing model version": (_set("model_version", value=""), "model_version"),
    "no classes": (_set("classes", value=[]), "no classes"),
    "class name that is a path": (_set("classes", 0, "name", value="../evil"), "class name"),
    "reserved class name": (_set("classes", 0, "name", value="unknown"), "class name"),
    "duplicate class names": (_set("classes", 1, "name", value="fabric"), "twice"),
    "missing threshold": (_delete("classes", 0, "threshold"), "threshold"),
    "null threshold": (_set("classes", 0, "threshold", value=None), "threshold"),
    "threshold that disagrees with its normaliser": (
        _set("classes", 0, "threshold", value=123.0),
        "threshold",
    ),
    "missing normaliser value": (_delete("classes", 0, "normaliser", "median"), "normaliser"),
    "normaliser value that is text": (_set("classes", 1, "normaliser", "low", value="0.1"), "normaliser"),
    "missing routing threshold": (_delete("classes", 0, "routing", "unknown_threshold"), "unknown_threshold"),
    "missing calibration": (_delete("classes", 1, "calibration"), "calibration"),
    "empty held-out scores": (
        _set("classes", 0, "calibration", "heldout_scores", value=[]),
        "heldout_scores",
    ),
    "held-out score that is text": (
        _set("classes", 0, "calibration", "heldout_scores", 0, value="1"),
        "heldout_scores",
    ),
    "bank size that is not the index's": (_set("classes", 0, "bank_size", value=7), "bank_size"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_an_invalid_manifest_is_refused_with_a_clear_error(copy: Path, weights_dir: Path, case: str) -> None:
    change, message = BAD_MANIFESTS[case]
    reseal(copy, change)
    with pytest.raises(ArtifactError, match=message):
        load_model(copy, weights_dir=weights_dir)


# ---- tensors against the classes and the features they claim ------------------------------------


def _replace_tensors(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = dict(load_file(str(path / "tensors.safetensors")))
    change(tensors)
    save_file(tensors, str(path / "tensors.safetensors"))
    rehash(path, "tensors.safetensors")


def test_prototypes_for_fewer_classes_than_declared_are_refused(copy: Path, weights_dir: Path) -> None:
    _replace_tensors(copy, lambda t: t.__setitem__("prototypes", t["prototypes"][:1].copy()))
    with pytest.raises(ArtifactError, match="prototypes"):
        load_model(copy, weights_dir=weights_dir)


def test_prototypes_of_another_feature_size_are_refused(copy: Path, weights_dir: Path) -> None:
    _replace_tensors(copy, lambda t: t.__setitem__("prototypes", t["prototypes"][:, :10].copy()))
    with pytest.raises(ArtifactError, match="prototypes"):
        load_model(copy, weights_dir=weights_dir)


def test_non_finite_tensors_are_refused(copy: Path, weights_dir: Path) -> None:
    def poison(tensors: dict[str, np.ndarray]) -> None:
        tensors["prototypes"] = tensors["prototypes"].copy()
        tensors["prototypes"][1, 3] = np.nan

    _replace_tensors(copy, poison)
    with pytest.raises(ArtifactError, match="prototypes"):
        load_model(copy, weights_dir=weights_dir)


def test_an_index_of_another_dimension_is_refused_naming_its_class(copy: Path, weights_dir: Path) -> None:
    import faiss

    bank = np.random.default_rng(0).random((200, 7), dtype=np.float32)
    faiss.write_index(build_index(bank), str(copy / "index_001.faiss"))
    rehash(copy, "index_001.faiss")
    with pytest.raises(ArtifactError, match="washer"):
        load_model(copy, weights_dir=weights_dir)


def test_a_model_whose_files_are_missing_from_the_manifest_cannot_read_them(
    copy: Path, weights_dir: Path
) -> None:
    def unlist(manifest: dict[str, Any]) -> None:
        del manifest["files"]["index_001.faiss"]

    reseal(copy, unlist)  # the file is still on disk, but nothing vouches for it
    with pytest.raises(ArtifactError, match=r"index_001\.faiss"):
        load_model(copy, weights_dir=weights_dir)


def test_the_architecture_allow_list_applies_when_building_a_backbone_too() -> None:
    from shared.engine.backbones import build_timm_model, get_spec
    from shared.errors import BackboneError

    with pytest.raises(BackboneError, match="checkpoint_path"):
        build_timm_model(get_spec("dinov2_vits14"), 56, None, {"checkpoint_path": "/etc/passwd"})
    with pytest.raises(BackboneError, match="depth"):
        build_timm_model(get_spec("dinov2_vits14"), 56, None, {"depth": 10_000})
