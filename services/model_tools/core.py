"""What ``lineguard fit``, ``evaluate`` and ``score`` do, as plain functions (no argument parsing,
no printing): the engine's command-line tools without the command line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from shared.engine.backbones import file_sha256
from shared.engine.config import FitConfig, FitProgress, RuntimeOptions, ScoreResult
from shared.engine.dataset import IMAGE_SUFFIXES, ClassData, discover, labelled_defects
from shared.engine.evaluation import evaluate
from shared.engine.export import export_backbone
from shared.engine.fewshot import fit_few_shot, select_shots
from shared.engine.fitting import DefectSample, fit_model, source_sha256
from shared.engine.images import load_image_file
from shared.engine.model import InspectionModel
from shared.engine.persistence import load_model, save_model
from shared.errors import DatasetError, ImageError
from shared.messages.anomaly_map import overlay, to_levels

REGION_OUTLINE = (255, 0, 0)  # region boxes drawn on overlays
OVERLAY_SUFFIX = "_overlay.png"  # <image stem>_overlay.png in --overlay-dir


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (None: torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def fit_folder(
    data: str | Path,
    classes: list[str] | None,
    config: FitConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    defect_samples: str | Path | None = None,
    labelled_per_type: int | None = None,
    labelled_dir: str | Path | None = None,
    progress: FitProgress | None = None,
    options: RuntimeOptions | None = None,
    export: bool = True,
    shots: int | None = None,
    shots_seed: int | None = None,
    confirmed_normals: str | Path | None = None,
) -> InspectionModel:
    """Fit a model on the normal training images of an MVTec-layout folder and write it to ``out``.

    Labelled defects (``labelled_per_type`` per defect type, chosen as ``dataset.labelled_defects``
    says) come from ``data``'s own ``<class>/test/<type>/`` folders, or from ``labelled_dir`` (the
    same layout, e.g. what ``lineguard labels export`` writes; all of them unless
    ``labelled_per_type`` is given), with their masks where present. ``labelled_dir``'s
    ``<class>/train/good/`` images are confirmed normals: they join the class's normal images.
    ``defect_samples`` (a folder of defective images, one subfolder per class when there are
    several classes) adds an F1-optimal threshold to each class's calibration record. ``export``:
    include the backbone's ONNX export (``options`` choose the runtime that computes the features). ``shots``:
    a few-shot model from that many of each class's normal images (``shared.engine.fewshot``),
    with ``confirmed_normals`` (an MVTec-layout folder) held out for its threshold.
    """
    found = discover(data, classes)
    if shots is not None:
        model = fit_few_shot_folder(found, shots, shots_seed, confirmed_normals, config, progress)
    else:
        empty = [class_data.name for class_data in found if len(class_data.train) < 2]
        if empty:
            raise DatasetError(f"class(es) {', '.join(empty)} have fewer than 2 images in train/good")
        training: dict[str, list[Path | np.ndarray]] = {d.name: list(d.train) for d in found}
        defects: dict[str, list[DefectSample]] = {}
        confirmed: dict[str, int] = {}
        if labelled_dir is not None or labelled_per_type is not None:
            sources = _labelled_sources(found, labelled_dir)
            for class_data in sources:
                chosen = labelled_defects(class_data, labelled_per_type, config.seed)
                defects[class_data.name] = [DefectSample(s.path, s.mask_path, s.defect_type) for s in chosen]
                if labelled_dir is not None:
                    confirmed[class_data.name] = _add_confirmed_normals(
                        training[class_data.name], class_data.train
                    )
        model = fit_model(training, config, progress, defects=defects, options=options, export=export)
        if labelled_dir is not None:
            model.metadata["training_data"]["confirmed_normals"] = confirmed
    if defect_samples:
        offer_f1_thresholds(model, Path(defect_samples))
    save_model(model, out, overwrite=overwrite)
    return model


def fit_few_shot_folder(
    found: list[ClassData],
    shots: int,
    shots_seed: int | None,
    confirmed_normals: str | Path | None,
    config: FitConfig,
    progress: FitProgress | None,
) -> InspectionModel:
    """A few-shot model from ``shots`` train/good images per class (first by name, or seeded), and
    the confirmed normals of those classes found under ``confirmed_normals`` (never a shot again)."""
    training: dict[str, list[Path | np.ndarray]] = {
        d.name: list(select_shots(d.train, shots, shots_seed)) for d in found
    }
    confirmed: dict[str, list[Path | np.ndarray]] = {}
    if confirmed_normals:
        names = {d.name for d in found}
        for extra in discover(confirmed_normals):
            if extra.name in names and extra.train:
                used = {file_sha256(Path(p)) for p in training[extra.name] if isinstance(p, Path)}
                confirmed[extra.name] = [p for p in extra.train if file_sha256(p) not in used]
    return fit_few_shot(training, config, progress, confirmed=confirmed)


def _labelled_sources(found: list[ClassData], labelled_dir: str | Path | None) -> list[ClassData]:
    """Where each fitted class's labelled defects come from: its own data, or the class of the same
    name in ``labelled_dir`` (classes there that are not being fitted are not read)."""
    if labelled_dir is None:
        return found
    names = {class_data.name for class_data in found}
    return [class_data for class_data in discover(labelled_dir) if class_data.name in names]


def _add_confirmed_normals(normals: list[Path | np.ndarray], confirmed: list[Path]) -> int:
    """Append the confirmed normal images not already among ``normals`` (same file bytes); returns
    how many were added."""
    known = {source_sha256(source) for source in normals}
    added = 0
    for path in confirmed:
        digest = source_sha256(path)
        if digest not in known:
            normals.append(path)
            known.add(digest)
            added += 1
    return added


def offer_f1_thresholds(model: InspectionModel, folder: Path) -> None:
    """Record an F1-optimal threshold per class from the defective images under ``folder``."""
    for name in model.classes:
        class_folder = folder / name if (folder / name).is_dir() else folder
        if len(model.classes) > 1 and class_folder == folder:
            continue
        paths = sorted(p for p in class_folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if paths:
            model.offer_f1_threshold(name, [load_image_file(p) for p in paths])


def evaluate_folder(
    model_dir: str | Path,
    data: str | Path,
    classes: list[str] | None,
    *,
    batch_size: int = 1,
    options: RuntimeOptions | None = None,
    weights_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[InspectionModel, dict[str, Any]]:
    """The model and its report on the test images of an MVTec-layout folder.

    ``on_start`` learns the number of test images before scoring begins (for a progress bar).
    """
    model = load_model(model_dir, options=options, weights_dir=weights_dir)
    found = discover(data, classes)
    if on_start is not None:
        on_start(sum(len(class_data.test) for class_data in found))
    return model, evaluate(model, found, batch_size=batch_size, progress=progress)


def export_model(
    model_dir: str | Path,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    weights_dir: str | Path | None = None,
) -> InspectionModel:
    """The model at ``model_dir`` written to ``out`` (which may be the same directory, replaced
    atomically) with its backbone's parity-checked ONNX export."""
    model = load_model(model_dir, weights=weights, weights_dir=weights_dir, options=RuntimeOptions())
    model.extractor.export = export_backbone(model.extractor)
    save_model(model, out, overwrite=True)
    return model


@dataclass
class ScoredFile:
    """One image file's outcome: ``entry`` is its JSON record; ``result`` is None when the file
    could not be read (``entry["error"]`` says why)."""

    entry: dict[str, Any]
    result: ScoreResult | None


def score_file(
    model: InspectionModel, name: str, hint: str | None, overlay_dir: Path | None = None
) -> ScoredFile:
    """Score one image file; with ``overlay_dir``, write its heatmap overlay there."""
    try:
        image = load_image_file(name)
    except (ImageError, OSError) as exc:
        return ScoredFile({"image": name, "error": str(exc)}, None)
    result = model.score_batch([image], hints=[hint])[0]
    entry = result_entry(name, result)
    if overlay_dir is not None:
        overlay_path = overlay_dir / f"{Path(name).stem}{OVERLAY_SUFFIX}"
        write_overlay(image, result, overlay_path)
        entry["overlay"] = str(overlay_path)
    return ScoredFile(entry, result)


def result_entry(name: str, result: ScoreResult) -> dict[str, Any]:
    return {
        "image": name,
        "product_class": result.product_class,
        "route_confidence": round(result.route_confidence, 4),
        "hint_mismatch": result.hint_mismatch,
        "score": round(result.score, 4),
        "raw_score": round(result.raw_score, 6),
        "threshold": round(result.threshold, 6),
        "decision": result.decision.value,
        "reason": result.reason,
        "regions": [
            {
                "x": r.x,
                "y": r.y,
                "width": r.width,
                "height": r.height,
                "score": round(r.score, 4),
                "area_fraction": round(r.area_fraction, 5),
            }
            for r in result.regions
        ],
    }


def write_overlay(image: np.ndarray, result: ScoreResult, path: Path) -> None:
    """The anomaly map over the image in the project's one colour ramp, region boxes outlined."""
    canvas = Image.fromarray(overlay(image, to_levels(result.anomaly_map)))
    draw = ImageDraw.Draw(canvas)
    for region in result.regions:
        draw.rectangle(
            [region.x, region.y, region.x + region.width - 1, region.y + region.height - 1],
            outline=REGION_OUTLINE,
        )
    canvas.save(path)
