"""The fields of a model manifest, checked before any of them is used (``persistence.load_model``).

A manifest that passes names a known backbone with its registered timm model, only allowed
architecture overrides, settings of the right types within bounds that keep loading and scoring
small, a model version, and at least one class, each with a valid unique name and every number its
decisions depend on (threshold, normaliser, routing threshold, held-out calibration scores) present
and finite. Non-finite numbers are already refused when the JSON is parsed (``artifacts``); here a
missing or mistyped one is. Each refusal is an ``ArtifactError`` that names the field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from shared.engine.artifacts import is_sha256_hex
from shared.engine.backbones import check_arch_overrides, get_spec
from shared.engine.clip_backbone import check_clip_overrides
from shared.engine.config import FitConfig, is_valid_class_name
from shared.engine.postprocess import Normaliser
from shared.errors import ArtifactError, BackboneError, ConfigError
from shared.limits import ID_MAX

MAX_CLASSES = 1024
MAX_HELDOUT_SCORES = 1_000_000
# Bounds on settings that size what loading and scoring allocate (a manifest is input, not code).
SETTING_BOUNDS: dict[str, tuple[float, float]] = {
    "input_size": (16, 1024),
    "k": (1, 1024),
    "feature_dim": (1, 16384),
    "blur_sigma": (0.0, 64.0),
    "batch_size": (1, 1024),
}
MAX_LAYERS = 16
MAX_LAYER_INDEX = 64
MAX_WINDOW_SCALES = 8
_METADATA_KEYS = ("created_at", "training_data", "fit_seconds")


@dataclass(frozen=True)
class ClassEntry:
    """One class as the manifest declares it, its numbers checked."""

    name: str
    normaliser: Normaliser
    unknown_threshold: float
    calibration: dict[str, Any]
    facts: dict[str, Any]  # the whole entry: what the scorer reported about itself (e.g. bank_size)


@dataclass(frozen=True)
class CheckedManifest:
    version: str
    config: FitConfig
    backbone: dict[str, Any]
    classes: list[ClassEntry]
    metadata: dict[str, Any]


def check_manifest(manifest: dict[str, Any], where: Path | str) -> CheckedManifest:
    """The manifest's model facts, or an ``ArtifactError`` naming the first field that is wrong."""
    version = manifest.get("model_version")
    if not isinstance(version, str) or not 0 < len(version) <= ID_MAX:
        raise ArtifactError(f"{where}: model_version must be 1-{ID_MAX} characters, got {_show(version)}")
    config = _check_config(manifest.get("config"), where)
    backbone = _check_backbone(manifest.get("backbone"), config, where)
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ArtifactError(f"{where}: the manifest declares no classes")
    if len(classes) > MAX_CLASSES:
        raise ArtifactError(f"{where}: {len(classes)} classes, over the limit of {MAX_CLASSES}")
    entries: list[ClassEntry] = []
    for i, entry in enumerate(classes):
        checked = _check_class(entry, f"{where}: classes[{i}]")
        if any(known.name == checked.name for known in entries):
            raise ArtifactError(f"{where}: the manifest names class {checked.name!r} twice")
        entries.append(checked)
    metadata = {key: manifest[key] for key in _METADATA_KEYS if key in manifest}
    return CheckedManifest(version, config, backbone, entries, metadata)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def number(value: Any, what: str) -> float:
    """``value`` as a finite float: an int or a float, never a bool, a string or null."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArtifactError(f"{what} is {_show(value)}, not a number")
    try:
        result = float(value)
    except OverflowError:
        raise ArtifactError(f"{what} is not a finite number") from None
    if not math.isfinite(result):
        raise ArtifactError(f"{what} is not a finite number")
    return result


def _check_config(raw: Any, where: Path | str) -> FitConfig:
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: the manifest has no config")
    hints = typing.get_type_hints(FitConfig)
    known = {f.name for f in dataclasses.fields(FitConfig)}
    for name, value in raw.items():
        if name not in known:
            raise ArtifactError(f"{where}: config.{str(name)[:64]} is not a model setting")
        _check_setting(hints[name], value, f"{where}: config.{name}")
        if name in SETTING_BOUNDS and value is not None:
            low, high = SETTING_BOUNDS[name]
            if not low <= value <= high:
                raise ArtifactError(f"{where}: config.{name} is {value}, outside [{low}, {high}]")
    layers = raw.get("layers")
    if layers is not None and (
        not 0 < len(layers) <= MAX_LAYERS or not all(0 <= layer <= MAX_LAYER_INDEX for layer in layers)
    ):
        raise ArtifactError(
            f"{where}: config.layers must be 1-{MAX_LAYERS} indices in [0, {MAX_LAYER_INDEX}]"
        )
    scales = raw.get("winclip_scales")
    if scales is not None and (
        not 0 < len(scales) <= MAX_WINDOW_SCALES or not all(0 < size <= 64 for size in scales)
    ):
        raise ArtifactError(f"{where}: config.winclip_scales must be 1-{MAX_WINDOW_SCALES} sizes in [1, 64]")
    try:
        check_clip_overrides(raw.get("clip_overrides", {}))
        check_arch_overrides(raw.get("arch_overrides", {}))
        values = dict(raw)
        if layers is not None:
            values["layers"] = tuple(layers)
        return FitConfig(**values)
    except (BackboneError, ConfigError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: config: {exc}") from None


def _check_setting(tp: Any, value: Any, what: str) -> None:
    """``value`` has the type a ``FitConfig`` field declares (JSON arrays for tuples)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return
        (inner,) = [arg for arg in get_args(tp) if arg is not type(None)]
        _check_setting(inner, value, what)
    elif origin is Literal:
        if value not in get_args(tp):
            raise ArtifactError(f"{what} is {_show(value)}, not one of {', '.join(map(str, get_args(tp)))}")
    elif origin is tuple:
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ArtifactError(f"{what} must be a list of integers")
    elif origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ArtifactError(f"{what} must be a mapping")
    elif tp is bool:
        if not isinstance(value, bool):
            raise ArtifactError(f"{what} is {_show(value)}, not true or false")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArtifactError(f"{what} is {_show(value)}, not an integer")
    elif tp is float:
        number(value, what)
    elif tp is str:
        if not isinstance(value, str) or len(value) > 4096:
            raise ArtifactError(f"{what} is {_show(value)}, not a string")
    else:  # a FitConfig field of a type this check does not know yet: refuse rather than guess
        raise ArtifactError(f"{what}: settings of type {tp} cannot be checked")


def _check_backbone(raw: Any, config: FitConfig, where: Path | str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: the manifest has no backbone section")
    try:
        spec = get_spec(config.backbone)
    except BackboneError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    if raw.get("name") != spec.name:
        raise ArtifactError(
            f"{where}: backbone.name {_show(raw.get('name'))} is not the config's backbone {spec.name!r}"
        )
    if raw.get("timm_name") != spec.timm_name:
        raise ArtifactError(
            f"{where}: backbone.timm_name {_show(raw.get('timm_name'))} is not {spec.timm_name!r}, "
            f"the registered model of {spec.name}"
        )
    digest = raw.get("weights_sha256")
    if digest is not None and not is_sha256_hex(digest):
        raise ArtifactError(f"{where}: backbone.weights_sha256 {_show(digest)} is not a sha256 digest")
    recorded = raw.get("weights_path")
    if recorded is not None and (not isinstance(recorded, str) or len(recorded) > 4096):
        raise ArtifactError(f"{where}: backbone.weights_path must be a string")
    if raw.get("input_size", config.input_size) != config.input_size:
        raise ArtifactError(f"{where}: backbone.input_size differs from config.input_size")
    layers = list(config.layers or spec.default_layers)
    if raw.get("layers", layers) != layers:
        raise ArtifactError(f"{where}: backbone.layers differ from config.layers")
    if "export" in raw:
        _check_export(raw["export"], config, f"{where}: backbone.export")
    return raw


def _check_export(raw: Any, config: FitConfig, what: str) -> None:
    """The backbone export's entry: an ONNX file of the artifact, for this input size, with the
    grid and feature size it computes (checked again against the running graph at loading)."""
    if not isinstance(raw, dict):
        raise ArtifactError(f"{what} is not a mapping")
    if not isinstance(raw.get("file"), str) or raw.get("format") != "onnx":
        raise ArtifactError(f"{what} must name its file and have format 'onnx'")
    if raw.get("input_size") != config.input_size:
        raise ArtifactError(f"{what}.input_size differs from config.input_size")
    grid, dim = raw.get("grid"), raw.get("feature_dim")
    if not (
        isinstance(grid, list)
        and len(grid) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= config.input_size for v in grid)
    ):
        raise ArtifactError(f"{what}.grid must be two positive integers")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= SETTING_BOUNDS["feature_dim"][1]:
        raise ArtifactError(f"{what}.feature_dim must be a positive integer")


def _check_class(entry: Any, what: str) -> ClassEntry:
    if not isinstance(entry, dict):
        raise ArtifactError(f"{what} is not a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not is_valid_class_name(name):
        raise ArtifactError(
            f"{what}: class name {_show(name)} is not valid (1-64 of A-Z a-z 0-9 . _ -, not 'unknown')"
        )
    what = f"{what} ({name})"
    raw_normaliser = entry.get("normaliser")
    if not isinstance(raw_normaliser, dict) or set(raw_normaliser) != {"low", "median", "threshold"}:
        raise ArtifactError(f"{what}: normaliser must have exactly low, median and threshold")
    normaliser = Normaliser(
        **{
            key: number(raw_normaliser[key], f"{what}: normaliser.{key}")
            for key in ("low", "median", "threshold")
        }
    )
    threshold = number(entry.get("threshold"), f"{what}: threshold")
    if threshold != normaliser.threshold:
        raise ArtifactError(
            f"{what}: threshold {threshold} disagrees with normaliser.threshold {normaliser.threshold}"
        )
    routing = entry.get("routing")
    unknown_threshold = number(
        routing.get("unknown_threshold") if isinstance(routing, dict) else None,
        f"{what}: routing.unknown_threshold",
    )
    if unknown_threshold < 0:
        raise ArtifactError(f"{what}: routing.unknown_threshold is negative")
    calibration = entry.get("calibration")
    if not isinstance(calibration, dict):
        raise ArtifactError(f"{what}: calibration is missing")
    heldout = calibration.get("heldout_scores")
    if not isinstance(heldout, list) or not 0 < len(heldout) <= MAX_HELDOUT_SCORES:
        raise ArtifactError(f"{what}: calibration.heldout_scores must list 1-{MAX_HELDOUT_SCORES} scores")
    for i, score in enumerate(heldout):
        number(score, f"{what}: calibration.heldout_scores[{i}]")
    if "cold_start" in calibration:
        _check_cold_start(calibration["cold_start"], f"{what}: calibration.cold_start")
    return ClassEntry(name, normaliser, unknown_threshold, dict(calibration), entry)


def _check_cold_start(raw: Any, what: str) -> None:
    """The review gate of a few-shot class: counts the scorer compares on every frame."""
    if not isinstance(raw, dict):
        raise ArtifactError(f"{what} must be a mapping")
    for key in ("shots", "confirmed_normals", "review_until_confirmed"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ArtifactError(f"{what}.{key} is {_show(value)}, not a count")
