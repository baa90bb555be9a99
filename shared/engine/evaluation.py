"""Evaluate a fitted model on MVTec-layout test data (the numbers ``lineguard evaluate`` reports)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared.engine.dataset import ClassData, TestSample
from shared.engine.images import load_image_file
from shared.engine.metrics import aupro, auroc, f1_max, pixel_auroc, rates_at_threshold
from shared.engine.model import InspectionModel
from shared.errors import ConfigError, DatasetError

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "false_reject_rate", "escape_rate")


@dataclass
class ImageOutcome:
    sample: TestSample
    product_class: str
    raw_score: float
    threshold: float
    anomaly_map: np.ndarray


def load_mask(sample: TestSample, shape: tuple[int, int]) -> np.ndarray:
    if sample.mask_path is None:
        return np.zeros(shape, dtype=bool)
    with Image.open(sample.mask_path) as mask_image:
        mask = mask_image.convert("L")
        if mask.size != (shape[1], shape[0]):
            mask = mask.resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        return np.asarray(mask) > 127


def _clean(value: float) -> float | None:
    return None if value != value else round(float(value), 6)  # NaN -> null in JSON


def class_metrics(outcomes: list[ImageOutcome], threshold: float) -> dict[str, Any]:
    labels = np.array([o.sample.is_defect for o in outcomes])
    scores = np.array([o.raw_score for o in outcomes])
    # Pixel metrics need a mask: good images (all-normal) and defect images with a mask file.
    with_masks = [o for o in outcomes if not o.sample.is_defect or o.sample.mask_path is not None]
    masks = [load_mask(o.sample, o.anomaly_map.shape) for o in with_masks]
    maps = [o.anomaly_map for o in with_masks]
    frr, escape = rates_at_threshold(labels, scores, threshold)
    return {
        "image_auroc": _clean(auroc(labels, scores)),
        "pixel_auroc": _clean(pixel_auroc(masks, maps)) if masks else None,
        "aupro": _clean(aupro(masks, maps)) if masks else None,
        "f1_max": _clean(f1_max(labels, scores)),
        "false_reject_rate": _clean(frr),
        "escape_rate": _clean(escape),
        "n_good": int((~labels).sum()),
        "n_defect": int(labels.sum()),
    }


def evaluate(
    model: InspectionModel,
    classes: list[ClassData],
    *,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score every test image without hints (as the line would) and compute the report."""
    unknown = [data.name for data in classes if data.name not in model.classes]
    if unknown:
        raise ConfigError(f"class(es) {', '.join(unknown)} are not in the model ({', '.join(model.classes)})")
    first = next((data.test[0] for data in classes if data.test), None)
    if first is not None:  # warm-up: the first call pays for lazy initialisation, not a frame
        model.score_batch([load_image_file(first.path)])
    latencies: list[float] = []
    per_class: dict[str, dict[str, Any]] = {}
    routed_right = routed_total = 0
    for data in classes:
        outcomes: list[ImageOutcome] = []
        samples = list(data.test)
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = [load_image_file(sample.path) for sample in chunk]
            began = time.perf_counter()
            results = model.score_batch(images)
            latencies.extend([(time.perf_counter() - began) * 1000 / len(chunk)] * len(chunk))
            for sample, result in zip(chunk, results, strict=True):
                outcomes.append(
                    ImageOutcome(
                        sample, result.product_class, result.raw_score, result.threshold, result.anomaly_map
                    )
                )
            if progress is not None:
                progress(len(chunk))
        if not outcomes:
            raise DatasetError(f"class {data.name} has no test images")
        routed_right += sum(o.product_class == data.name for o in outcomes)
        routed_total += len(outcomes)
        class_model = model.class_models[model.classes.index(data.name)]
        per_class[data.name] = class_metrics(outcomes, class_model.threshold)
        # A few-shot threshold was not set on held-out normals: its false-reject rate is this one.
        per_class[data.name]["threshold_approximate"] = bool(
            class_model.calibration.get("threshold_approximate", False)
        )
    mean: dict[str, Any] = {}
    for key in METRIC_KEYS:
        values = [m[key] for m in per_class.values() if m[key] is not None]
        mean[key] = round(float(np.mean(values)), 6) if values else None
    mean["threshold_approximate"] = any(m["threshold_approximate"] for m in per_class.values())
    mean["n_good"] = sum(m["n_good"] for m in per_class.values())
    mean["n_defect"] = sum(m["n_defect"] for m in per_class.values())
    return {
        "classes": per_class,
        "mean": mean,
        "routing_accuracy": round(routed_right / routed_total, 6) if len(classes) > 1 else None,
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 3),
            "p99": round(float(np.percentile(latencies, 99)), 3),
        },
    }
