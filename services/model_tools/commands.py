"""The handlers of ``fit``, ``evaluate`` and ``score`` (imported only when one of them runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from shared.engine.artifacts import ArtifactError
from shared.engine.backbones import BackboneError
from shared.engine.dataset import IMAGE_SUFFIXES, DatasetError, discover
from shared.engine.evaluation import evaluate
from shared.engine.images import ImageError, load_image_file
from shared.engine.model import FitConfig, FitProgress, InspectionModel, ScoreResult


class _TqdmProgress(FitProgress):
    def __init__(self) -> None:
        self._bar: tqdm | None = None

    def stage(self, name: str, total: int) -> None:
        self.close()
        self._bar = tqdm(total=total, desc=name, unit="it", file=sys.stderr, leave=True)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fail(message: str) -> int:
    print(f"lineguard: {message}", file=sys.stderr)
    return 2


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def run_fit(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    try:
        classes = discover(args.data, args.classes)
        empty = [data.name for data in classes if len(data.train) < 2]
        if empty:
            return _fail(f"class(es) {', '.join(empty)} have fewer than 2 images in train/good")
        config = FitConfig(
            backbone=args.backbone,
            weights=args.weights,
            input_size=args.input_size,
            layers=args.layers,
            vit_combine=args.vit_combine,
            scorer=args.scorer,
            k=args.k,
            index=args.index,
            reduced_dims=args.reduced_dims,
            refine_factor=args.refine_factor,
            bank_size=args.bank_size,
            bank_ratio=args.bank_ratio,
            image_score=args.image_score,
            target_frr=args.target_frr,
            holdout_fraction=args.holdout,
            bank_from_all_normals=not args.bank_from_train_only,
            seed=args.seed,
        )
        out = Path(args.out)
        if out.exists() and not args.force:
            return _fail(f"{out} already exists; pass --force to replace it")
        progress = _TqdmProgress()
        data: dict[str, list[Path | np.ndarray]] = {d.name: list(d.train) for d in classes}
        model = InspectionModel.fit(data, config, progress)
        progress.close()
        if args.defect_samples:
            _offer_f1_thresholds(model, Path(args.defect_samples))
        model.save(out, overwrite=args.force)
    except (DatasetError, BackboneError, ImageError, ArtifactError, ValueError) as exc:
        return _fail(str(exc))
    print(f"model {model.version} ({', '.join(model.classes)}) written to {out}")
    for class_model in model.class_models:
        calibration = class_model.calibration
        extra = ""
        if "f1_threshold" in calibration:
            extra = f", F1-optimal threshold {calibration['f1_threshold']:.4f} (F1 {calibration['f1']:.3f})"
        print(
            f"  {class_model.name}: threshold {class_model.threshold:.4f} at {calibration['target_frr']:.1%} "
            f"false rejects on {calibration['n_holdout']} held-out normal images{extra}"
        )
    return 0


def _offer_f1_thresholds(model: InspectionModel, folder: Path) -> None:
    for name in model.classes:
        class_folder = folder / name if (folder / name).is_dir() else folder
        if len(model.classes) > 1 and class_folder == folder:
            continue
        paths = sorted(p for p in class_folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if paths:
            model.offer_f1_threshold(name, [load_image_file(p) for p in paths])


def run_evaluate(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    try:
        model = InspectionModel.load(args.model)
        classes = discover(args.data, args.classes)
        total = sum(len(data.test) for data in classes)
        with tqdm(total=total, desc="scoring", unit="img", file=sys.stderr) as bar:
            report = evaluate(model, classes, batch_size=args.batch_size, progress=bar.update)
    except (DatasetError, ArtifactError, ImageError, ValueError) as exc:
        return _fail(str(exc))
    fit_seconds = model.metadata.get("fit_seconds")
    print(f"model {model.version}: backbone {model.backbone_name}, fit time {fit_seconds} s")
    for name, metrics in report["classes"].items():
        print(f"  {name}: " + ", ".join(f"{key} {_fmt(value)}" for key, value in metrics.items()))
    print("  mean: " + ", ".join(f"{key} {_fmt(value)}" for key, value in report["mean"].items()))
    print(f"  routing accuracy {_fmt(report['routing_accuracy'])}, latency ms {report['latency_ms']}")
    if args.json:
        print(json.dumps(report, sort_keys=False))
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run_score(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    try:
        model = InspectionModel.load(args.model)
    except ArtifactError as exc:
        return _fail(str(exc))
    overlay_dir = Path(args.overlay_dir) if args.overlay_dir else None
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    failed = False
    for name in args.images:
        try:
            image = load_image_file(name)
        except (ImageError, OSError) as exc:
            failed = True
            entries.append({"image": name, "error": str(exc)})
            print(f"{name}: error: {exc}")
            continue
        result = model.score_batch([image], hints=[args.hint])[0]
        entry = _result_entry(name, result)
        if overlay_dir is not None:
            overlay_path = overlay_dir / f"{Path(name).stem}_overlay.png"
            write_overlay(image, result, overlay_path)
            entry["overlay"] = str(overlay_path)
        entries.append(entry)
        regions = "; ".join(
            f"{r['x']},{r['y']} {r['width']}x{r['height']} ({r['score']:.2f})" for r in entry["regions"]
        )
        print(
            f"{name}: class {result.product_class} (confidence {result.route_confidence:.2f}), "
            f"score {result.score:.3f} (raw {result.raw_score:.4f}, threshold {result.threshold:.4f}), "
            f"{result.decision}{' - ' + result.reason if result.reason else ''}"
            f"{', regions ' + regions if regions else ''}"
        )
    if args.json:
        print(json.dumps({"model_version": model.version, "results": entries}))
    return 1 if failed else 0


def _result_entry(name: str, result: ScoreResult) -> dict[str, Any]:
    return {
        "image": name,
        "product_class": result.product_class,
        "route_confidence": round(result.route_confidence, 4),
        "hint_mismatch": result.hint_mismatch,
        "score": round(result.score, 4),
        "raw_score": round(result.raw_score, 6),
        "threshold": round(result.threshold, 6),
        "decision": result.decision,
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


def heat_colours(normalised_map: np.ndarray) -> np.ndarray:
    """Map 0..1 to a blue-green-yellow-red ramp (0.5, the threshold, is yellow)."""
    value = np.clip(normalised_map, 0.0, 1.0)
    red = np.clip(2 * value, 0, 1)
    green = np.clip(2 - 2 * value, 0, 1) * np.clip(2 * value + 0.3, 0, 1)
    blue = np.clip(1 - 2 * value, 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def write_overlay(image: np.ndarray, result: ScoreResult, path: Path) -> None:
    heat = heat_colours(result.anomaly_map).astype(np.float32)
    blended = (0.55 * image.astype(np.float32) + 0.45 * heat).clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(blended)
    draw = ImageDraw.Draw(canvas)
    for region in result.regions:
        draw.rectangle(
            [region.x, region.y, region.x + region.width - 1, region.y + region.height - 1],
            outline=(255, 0, 0),
        )
    canvas.save(path)
