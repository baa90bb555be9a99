"""Saving and loading an ``InspectionModel`` as a hashed model directory (``artifacts.py``).

The directory holds ``manifest.json`` (settings, classes, calibration, every file's sha256),
``tensors.safetensors`` (routing prototypes and the tensors scorers keep there) and any files of
a scorer's own format (faiss indexes). Loading verifies every hash first and unpickles nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from shared.engine.artifacts import read_manifest, write_artifact
from shared.engine.backbones import file_sha256, get_spec, resolve_weights
from shared.engine.class_model import ClassModel
from shared.engine.config import FitConfig
from shared.engine.features import make_extractor
from shared.engine.model import InspectionModel
from shared.engine.postprocess import Normaliser
from shared.engine.scorers.base import ArtifactFiles, scorer_class
from shared.errors import ArtifactError, BackboneError

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

    write_artifact(path, manifest_of(model), write_files, overwrite=overwrite)


def load_model(path: str | Path, *, weights: str | Path | None = None) -> InspectionModel:
    """Load a model directory after verifying every hash; raises ``ArtifactError``."""
    root = Path(path)
    manifest = read_manifest(root)
    try:
        config_dict = dict(manifest["config"])
        config_dict["layers"] = tuple(config_dict["layers"])
        config = FitConfig(**config_dict)
        backbone = manifest["backbone"]
        class_entries = manifest["classes"]
        spec = get_spec(config.backbone)
        scorer_type = scorer_class(config.scorer)
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError and BackboneError included
        raise ArtifactError(f"{root}/manifest.json is incompatible: {exc}") from None
    weights_path = _locate_weights(spec.name, backbone, weights)
    try:
        extractor = make_extractor(config, weights_path)
    except BackboneError as exc:
        raise ArtifactError(f"backbone of {root} cannot be built: {exc}") from None
    from safetensors.numpy import load_file

    tensors = load_file(str(root / TENSORS))
    files = ArtifactFiles(root, tensors)
    class_models = []
    try:
        for i, entry in enumerate(class_entries):
            normaliser = Normaliser(**{key: float(value) for key, value in entry["normaliser"].items()})
            class_models.append(
                ClassModel(
                    name=str(entry["name"]),
                    scorer=scorer_type.read(files, _slot(i), config),
                    normaliser=normaliser,
                    unknown_threshold=float(entry["routing"]["unknown_threshold"]),
                    prototype=tensors["prototypes"][i],
                    calibration=dict(entry["calibration"]),
                )
            )
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise ArtifactError(f"{root} is incomplete or incompatible: {exc!r}") from None
    metadata: dict[str, Any] = {
        key: manifest[key] for key in ("created_at", "training_data", "fit_seconds") if key in manifest
    }
    return InspectionModel(
        config,
        extractor,
        class_models,
        version=str(manifest["model_version"]),
        weights_sha256=backbone.get("weights_sha256"),
        weights_path=str(weights_path) if weights_path else None,
        metadata=metadata,
    )


def _locate_weights(name: str, backbone: dict[str, Any], override: str | Path | None) -> Path | None:
    """The backbone weight file whose sha256 the manifest names (random-init models have none)."""
    expected = backbone.get("weights_sha256")
    if expected is None:
        return None
    if override is not None:
        override = Path(override)
        if not override.is_file() or file_sha256(override) != expected:
            raise ArtifactError(
                f"weight file {override} is not the one the model was fitted with (sha256 {expected})"
            )
        return override
    candidates: list[Path] = []
    if backbone.get("weights_path"):
        candidates.append(Path(backbone["weights_path"]))
    with contextlib.suppress(BackboneError):  # no default source: only the recorded path counts
        candidates.append(resolve_weights(get_spec(name), None))
    for candidate in candidates:
        if candidate.is_file() and file_sha256(candidate) == expected:
            return candidate
    raise ArtifactError(
        f"the model needs the {name} weight file with sha256 {expected} "
        f"(fitted from {backbone.get('weights_path')}); put that file there or pass it as weights"
    )
