"""Saving and loading an ``InspectionModel`` as a hashed model directory (``artifacts.py``).

The directory holds ``manifest.json`` (settings, classes, calibration, every file's sha256),
``tensors.safetensors`` (routing prototypes and the tensors scorers keep there) and any files of
a scorer's own format (faiss indexes). Loading unpickles nothing and trusts nothing it has not
checked: every file is verified and parsed from the same bytes (``artifacts.read_artifact``); the
manifest's fields are checked (``manifest_checks``); backbone weights are found only by the sha256
the manifest names, in the configured weights directory or the backbone's own local source, and
never at a path the manifest records; every tensor must fit the declared classes and the
backbone's features, shown by scoring one plain frame through every class.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from shared.engine.artifacts import VerifiedArtifact, read_artifact, write_artifact
from shared.engine.backbones import BackboneSpec, WeightBytes, get_spec, resolve_weights
from shared.engine.class_model import ClassModel
from shared.engine.config import FitConfig, RuntimeOptions
from shared.engine.export import BackboneExport
from shared.engine.features import FeatureExtractor, make_extractor
from shared.engine.manifest_checks import ClassEntry, check_manifest
from shared.engine.model import InspectionModel
from shared.engine.runtimes import resolve_runtime
from shared.engine.scorers.base import ArtifactFiles, PatchScorer, ScoreInput, scorer_class
from shared.errors import ArtifactError, BackboneError, ConfigError

MAX_WEIGHT_BYTES = 8 << 30  # the largest backbone weight file read into memory (DINOv2 ViT-g is 4.5 GB)

TENSORS = "tensors.safetensors"


def manifest_of(model: InspectionModel) -> dict[str, Any]:
    """The manifest body of ``model`` (``write_artifact`` adds the format, file hashes and digest)."""
    config = asdict(model.config)
    config["layers"] = list(model.extractor.config.layers)
    return {
        "model_version": model.version,
        "backbone": {
            "name": model.backbone_name,
            "timm_name": model.extractor.spec.timm_name,
            "weights_path": model.weights_path,
            "weights_sha256": model.weights_sha256,
            "layers": list(model.extractor.config.layers),
            "input_size": model.input_size,
            **({"export": model.extractor.export.facts} if model.extractor.export else {}),
        },
        "config": config,
        "classes": [
            {
                "name": class_model.name,
                "threshold": class_model.threshold,
                "calibration": class_model.calibration,
                "normaliser": {
                    "low": class_model.normaliser.low,
                    "median": class_model.normaliser.median,
                    "threshold": class_model.normaliser.threshold,
                },
                "routing": {"unknown_threshold": class_model.unknown_threshold},
                **class_model.scorer.manifest_facts(),
            }
            for class_model in model.class_models
        ],
        "routing": {
            "metric": "cosine",
            "unknown_factor": model.config.unknown_factor,
            "unknown_min_distance": model.config.unknown_min_distance,
        },
        **model.metadata,
    }


def _slot(index: int) -> str:
    return f"{index:03d}"  # a class's key in file and tensor names: index_000.faiss, ..._000


def save_model(model: InspectionModel, path: str | Path, *, overwrite: bool = False) -> None:
    """Write the model directory atomically (see ``shared.engine.artifacts``)."""
    from safetensors.numpy import save_file

    def write_files(folder: Path) -> None:
        tensors: dict[str, np.ndarray] = {
            "prototypes": np.stack([m.prototype for m in model.class_models]).astype(np.float32)
        }
        files = ArtifactFiles(folder, tensors)
        for i, class_model in enumerate(model.class_models):
            class_model.scorer.write(files, _slot(i))
        save_file(tensors, str(folder / TENSORS))
        export = model.extractor.export
        if export is not None:
            (folder / export.facts["file"]).write_bytes(export.data)

    write_artifact(path, manifest_of(model), write_files, overwrite=overwrite)


def load_model(
    path: str | Path,
    *,
    weights: str | Path | None = None,
    weights_dir: str | Path | None = None,
    root: str | Path | None = None,
    options: RuntimeOptions | None = None,
) -> InspectionModel:
    """Load a model directory, verifying everything first; raises ``ArtifactError``.

    ``weights``: a weight file to use (it must have the manifest's sha256). ``weights_dir``: where
    weight files are looked up by that sha256. ``root``: the directory must lie inside it.
    ``options``: where and how the backbone runs (default: torch on the CPU, fp32).
    """
    return model_from_artifact(
        read_artifact(path, root=root), weights=weights, weights_dir=weights_dir, options=options
    )


def model_from_artifact(
    artifact: VerifiedArtifact,
    *,
    weights: str | Path | None = None,
    weights_dir: str | Path | None = None,
    options: RuntimeOptions | None = None,
) -> InspectionModel:
    """Build the model a verified artifact describes, from its bytes in memory.

    A runtime that runs the backbone export (OpenVINO, ONNX Runtime) needs no weight file; torch
    needs the one with the manifest's sha256."""
    where = artifact.path
    checked = check_manifest(artifact.manifest, where)
    config = checked.config
    try:
        spec = get_spec(config.backbone)
        scorer_type = scorer_class(config.scorer)
    except (BackboneError, ConfigError) as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    options = options or RuntimeOptions()
    export = _read_export(artifact, checked.backbone)
    try:
        runtime = resolve_runtime(options, export is not None)
    except BackboneError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    weight_file = None
    if runtime == "torch":
        weight_file = _locate_weights(spec, checked.backbone, weights, weights_dir)
    try:
        extractor = make_extractor(config, weight_file, options=options, export=export)
    except BackboneError as exc:
        raise ArtifactError(f"backbone of {where} cannot be built: {exc}") from None
    except Exception as exc:  # timm/torch errors from settings that do not describe a buildable model
        raise ArtifactError(f"backbone of {where} cannot be built ({type(exc).__name__}: {exc})") from None
    features, grid = _probe_features(extractor, config, where)
    declared = (export.facts["grid"], export.facts["feature_dim"]) if export is not None else None
    if declared is not None and ([*grid], features.shape[2]) != declared:
        raise ArtifactError(
            f"{where}: the backbone gives {features.shape[2]}-dimensional features on a {grid[0]}x{grid[1]} "
            f"grid, its export entry declares {declared[1]} on {declared[0]}"
        )
    tensors = _read_tensors(artifact)
    prototypes = _checked_prototypes(tensors, len(checked.classes), features.shape[2], where)
    files = ArtifactFiles(
        artifact.path,
        tensors,
        artifact.read,
        find_weights=lambda digest, name: _scorer_weights(digest, name, weights_dir),
    )
    class_models = [
        ClassModel(
            name=entry.name,
            scorer=_read_scorer(scorer_type, files, i, entry, config, features, grid, where),
            normaliser=entry.normaliser,
            unknown_threshold=entry.unknown_threshold,
            prototype=prototypes[i],
            calibration=entry.calibration,
        )
        for i, entry in enumerate(checked.classes)
    ]
    return InspectionModel(
        config,
        extractor,
        class_models,
        version=checked.version,
        weights_sha256=checked.backbone.get("weights_sha256"),
        weights_path=str(weight_file.path) if weight_file else checked.backbone.get("weights_path"),
        metadata=checked.metadata,
    )


def _probe_features(
    extractor: FeatureExtractor, config: FitConfig, where: Path
) -> tuple[np.ndarray, tuple[int, int]]:
    """The backbone's patch features of one plain grey frame: their size and grid are what every
    tensor of the model must fit."""
    frame = np.full((config.input_size, config.input_size, 3), 128, dtype=np.uint8)
    try:
        features, grid = extractor([frame])
    except Exception as exc:  # e.g. layer indices the backbone does not have
        raise ArtifactError(
            f"the backbone of {where} cannot compute features ({type(exc).__name__}: {exc})"
        ) from None
    return features.numpy(), grid


def _read_export(artifact: VerifiedArtifact, backbone: dict[str, Any]) -> BackboneExport | None:
    """The backbone export the manifest lists (its entry already checked), from the verified bytes."""
    entry = backbone.get("export")
    if entry is None:
        return None
    return BackboneExport(artifact.read(entry["file"]), dict(entry))


def _read_tensors(artifact: VerifiedArtifact) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    data = artifact.read(TENSORS)
    try:
        return dict(load(data))
    except Exception as exc:  # SafetensorError: a header that does not describe the bytes
        raise ArtifactError(f"{TENSORS} in {artifact.path} cannot be read ({exc})") from None


def _checked_prototypes(tensors: dict[str, np.ndarray], n_classes: int, dim: int, where: Path) -> np.ndarray:
    prototypes = tensors.get("prototypes")
    if prototypes is None:
        raise ArtifactError(f"{where}/{TENSORS} has no prototypes tensor")
    if prototypes.dtype.kind != "f" or prototypes.shape != (n_classes, dim):
        raise ArtifactError(
            f"{where}: prototypes are {prototypes.dtype} {prototypes.shape}, but the manifest declares "
            f"{n_classes} classes and the backbone gives {dim}-dimensional features"
        )
    if not np.isfinite(prototypes).all():
        raise ArtifactError(f"{where}: prototypes hold non-finite values")
    return prototypes


def _read_scorer(
    scorer_type: type[PatchScorer],
    files: ArtifactFiles,
    index: int,
    entry: ClassEntry,
    config: FitConfig,
    features: np.ndarray,
    grid: tuple[int, int],
    where: Path,
) -> PatchScorer:
    """One class's scorer from its files, shown to score the probe features to finite patch scores."""
    what = f"{where}: class {entry.name!r}"
    frame = np.full((config.input_size, config.input_size, 3), 128, dtype=np.uint8)
    try:
        scorer = scorer_type.read(files, _slot(index), config)
        facts = scorer.manifest_facts()
        patch = scorer.score(ScoreInput(features, grid, [frame]))  # a scorer may have its own grid
    except ArtifactError as exc:
        raise ArtifactError(f"{what}: {exc}") from None
    except Exception as exc:  # faiss, torch and numpy raise their own types for mismatched shapes
        raise ArtifactError(
            f"{what}: its {config.scorer} state does not fit the backbone's {features.shape[2]}-dimensional "
            f"features on a {grid[0]}x{grid[1]} grid ({type(exc).__name__}: {exc})"
        ) from None
    if np.shape(patch.patch) != (1, patch.grid[0] * patch.grid[1]) or not np.isfinite(patch.patch).all():
        raise ArtifactError(f"{what}: its {config.scorer} state gives non-finite or misshapen patch scores")
    for key, value in facts.items():
        if entry.facts.get(key) != value:
            raise ArtifactError(
                f"{what}: {key} is {entry.facts.get(key)!r} in the manifest but {value!r} in its files"
            )
    return scorer


def read_weight_file(path: Path) -> bytes:
    """A weight file's bytes, read once and bounded (hashed and parsed from this one copy)."""
    with path.open("rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_WEIGHT_BYTES:
            raise ArtifactError(f"{path} is not a regular file of at most {MAX_WEIGHT_BYTES} bytes")
        data = handle.read(MAX_WEIGHT_BYTES + 1)
    if len(data) > MAX_WEIGHT_BYTES:
        raise ArtifactError(f"{path} is over {MAX_WEIGHT_BYTES} bytes")
    return data


def _verified_weights(path: Path, expected: str) -> WeightBytes | None:
    if not path.is_file():
        return None
    data = read_weight_file(path)
    return WeightBytes(path, data) if hashlib.sha256(data).hexdigest() == expected else None


def _in_weights_dir(
    digest: str, recorded: str, weights_dir: str | Path | None, elsewhere: list[Path] | None = None
) -> WeightBytes | None:
    """The file with sha256 ``digest``: in ``weights_dir`` under the recorded bare name (it cannot
    leave the folder) or named by the digest itself, else in ``elsewhere``; verified, or None."""
    candidates: list[Path] = []
    if weights_dir is not None:
        folder = Path(weights_dir)
        if recorded not in ("", ".", ".."):
            candidates.append(folder / recorded)
        candidates.extend(sorted(folder.glob(f"{digest}*")))
    for candidate in [*candidates, *(elsewhere or [])]:
        found = _verified_weights(candidate, digest)
        if found is not None:
            return found
    return None


def _weights_missing(
    what: str, digest: str, recorded: str, weights_dir: str | Path | None, other_suffix: str
) -> ArtifactError:
    place = (
        f"the weights directory {weights_dir}" if weights_dir else "a weights directory (none is configured)"
    )
    named = f"as {recorded} or " if recorded not in ("", ".", "..") else "as "
    return ArtifactError(
        f"the model needs the {what}weight file with sha256 {digest}; "
        f"put it in {place} {named}{digest}.safetensors (or {other_suffix})"
    )


def _scorer_weights(digest: str, recorded: str, weights_dir: str | Path | None) -> WeightBytes:
    """A weight file a scorer needs besides the backbone (e.g. WinCLIP's CLIP checkpoint), found in
    ``weights_dir`` under its recorded bare name or named by its sha256, and verified."""
    name = Path(recorded).name  # a bare name: it cannot leave the folder
    found = _in_weights_dir(digest, name, weights_dir)
    if found is None:
        raise _weights_missing("", digest, name, weights_dir, ".pt")
    return found


def _locate_weights(
    spec: BackboneSpec,
    backbone: dict[str, Any],
    override: str | Path | None,
    weights_dir: str | Path | None,
) -> WeightBytes | None:
    """The backbone weight file with the sha256 the manifest names, read into memory (random-init
    models have none). Looked for as ``override``, else in ``weights_dir`` under the recorded file
    name or named by the digest itself, else at the backbone's own local source; a path the
    manifest records is never opened."""
    expected = backbone.get("weights_sha256")
    if expected is None:
        return None
    if override is not None:
        found = _verified_weights(Path(override), expected)
        if found is None:
            raise ArtifactError(
                f"weight file {override} is not the one the model was fitted with (sha256 {expected})"
            )
        return found
    recorded = Path(str(backbone.get("weights_path") or "")).name  # a bare name: it cannot leave the folder
    elsewhere: list[Path] = []
    with contextlib.suppress(BackboneError):  # no default source for this backbone
        elsewhere.append(resolve_weights(spec, None))
    found = _in_weights_dir(expected, recorded, weights_dir, elsewhere)
    if found is None:
        raise _weights_missing(f"{spec.name} ", expected, recorded, weights_dir, ".pth")
    return found
