"""Evaluate a fitted model on MVTec-layout test data (the numbers ``lineguard evaluate`` reports).

Memory stays bounded whatever the number and size of the test images: each image is scored, its
pixels go into fixed-size histograms (``metrics.PixelHistograms``) and are dropped; only three
numbers per image (label, score, defect type) are kept for the image-level metrics. Pixel metrics
rank the raw anomaly map resized to the image's own resolution (the normalised map clips at 0 and
1, which would tie the most anomalous pixels).

Images the model was trained on (normal images, and labelled defects drawn from a test folder with
``lineguard fit --labelled-defects``) are recognised by the sha256 of their file, recorded in the
manifest, and left out of every number; the report says how many.

Operating points: the false-reject and escape rates at the model's calibrated threshold, the
calibration error (achieved minus target false-reject rate, with a 95 % interval for the achieved
rate: a test set of a few hundred normals measures it only to a point or so), escapes per defect
type, and the true-positive rate at 0.1 %, 1 % and 5 % false rejects, where the threshold is set
on the test normals themselves (an oracle: how separable the scores are at that point).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from shared.engine.artifacts import is_sha256_hex
from shared.engine.backbones import file_sha256
from shared.engine.dataset import ClassData, TestSample
from shared.engine.images import load_image_file
from shared.engine.metrics import (
    PixelHistograms,
    auroc,
    binomial_interval,
    f1_max,
    rates_at_threshold,
    tpr_at_fpr,
)
from shared.engine.model import InspectionModel
from shared.engine.postprocess import resize_map
from shared.errors import ArtifactError, ConfigError, DatasetError

METRIC_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "false_reject_rate",
    "calibration_error",
    "escape_rate",
)
OPERATING_FPRS = (0.001, 0.01, 0.05)  # the false-reject rates the true-positive rate is read at
HISTOGRAM_BITS = 20  # 3 x 8 MiB of histograms per class; within 0.00004 of exact on magnetic tile


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


def trained_on(model: InspectionModel) -> set[str] | None:
    """The sha256 of every image the model was fitted on, as its manifest records them; None for a
    model fitted before they were recorded."""
    training = model.metadata.get("training_data")
    if not isinstance(training, dict) or "sha256" not in training:
        return None
    digests: set[str] = set()
    normals = training["sha256"]
    labelled = training.get("labelled_defects", {})
    if not isinstance(normals, dict) or not isinstance(labelled, dict):
        raise ArtifactError("the manifest's training_data.sha256 / labelled_defects are not mappings")
    for name, values in normals.items():
        if not isinstance(values, list) or not all(is_sha256_hex(v) for v in values):
            raise ArtifactError(
                f"the manifest's training_data.sha256[{str(name)[:64]!r}] is not a list of sha256"
            )
        digests.update(values)
    for name, entries in labelled.items():
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and is_sha256_hex(e.get("sha256")) for e in entries
        ):
            raise ArtifactError(
                f"the manifest's training_data.labelled_defects[{str(name)[:64]!r}] is malformed"
            )
        digests.update(entry["sha256"] for entry in entries)
    return digests


@dataclass
class ClassTally:
    """What one class's evaluation keeps while its images stream past."""

    pixels: PixelHistograms = field(default_factory=lambda: PixelHistograms(HISTOGRAM_BITS))
    labels: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    routed_right: int = 0
    excluded: int = 0
    without_mask: int = 0

    def add(
        self, sample: TestSample, class_name: str, product_class: str, raw: float, raw_map: np.ndarray
    ) -> None:
        self.labels.append(sample.is_defect)
        self.scores.append(raw)
        self.types.append(sample.defect_type)
        self.routed_right += product_class == class_name
        if sample.is_defect and sample.mask_path is None:
            self.without_mask += 1  # defective somewhere, but no pixel is labelled: no pixel metrics
            return
        self.pixels.add(load_mask(sample, raw_map.shape), raw_map)


def class_metrics(tally: ClassTally, threshold: float, target_frr: float | None) -> dict[str, Any]:
    labels = np.array(tally.labels, dtype=bool)
    scores = np.array(tally.scores, dtype=np.float64)
    types = np.array(tally.types)
    frr, escape = rates_at_threshold(labels, scores, threshold)
    rejected = scores >= threshold
    n_good = int((~labels).sum())
    low, high = binomial_interval(int(rejected[~labels].sum()), n_good)
    escapes_by_type = {}
    for kind in sorted(set(types[labels].tolist())):
        of_kind = labels & (types == kind)
        escaped = int((~rejected[of_kind]).sum())
        n = int(of_kind.sum())
        escapes_by_type[kind] = {"n": n, "escaped": escaped, "rate": _clean(escaped / n)}
    return {
        "image_auroc": _clean(auroc(labels, scores)),
        "pixel_auroc": _clean(tally.pixels.auroc()),
        "aupro": _clean(tally.pixels.aupro()),
        "f1_max": _clean(f1_max(labels, scores)),
        "threshold": _clean(threshold),
        "target_false_reject_rate": target_frr,
        "false_reject_rate": _clean(frr),
        "false_reject_rate_ci95": [_clean(low), _clean(high)],
        "calibration_error": _clean(frr - target_frr) if target_frr is not None else None,
        "escape_rate": _clean(escape),
        "escapes_by_type": escapes_by_type,
        "tpr_at_fpr": {str(fpr): _clean(tpr_at_fpr(labels, scores, fpr)) for fpr in OPERATING_FPRS},
        "n_good": n_good,
        "n_defect": int(labels.sum()),
        "n_defect_without_mask": tally.without_mask,
        "n_excluded_trained_on": tally.excluded,
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
    trained = trained_on(model)
    first = next((data.test[0] for data in classes if data.test), None)
    if first is not None:  # warm-up: the first call pays for lazy initialisation, not a frame
        model.score_batch([load_image_file(first.path)])
    latencies: list[float] = []
    per_class: dict[str, dict[str, Any]] = {}
    routed_right = routed_total = 0
    for data in classes:
        tally = ClassTally()
        samples = []
        for sample in data.test:
            if trained is not None and file_sha256(sample.path) in trained:
                tally.excluded += 1
            else:
                samples.append(sample)
        if progress is not None and tally.excluded:
            progress(tally.excluded)
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = [load_image_file(sample.path) for sample in chunk]
            began = time.perf_counter()
            results = model.score_batch(images)
            latencies.extend([(time.perf_counter() - began) * 1000 / len(chunk)] * len(chunk))
            for sample, image, result in zip(chunk, images, results, strict=True):
                height, width = image.shape[:2]
                raw_map = result.raw_map if result.raw_map is not None else result.anomaly_map
                tally.add(
                    sample,
                    data.name,
                    result.product_class,
                    result.raw_score,
                    resize_map(raw_map, height, width),
                )
            del images, results
            if progress is not None:
                progress(len(chunk))
        if not tally.labels:
            raise DatasetError(
                f"class {data.name} has no test images"
                + (f" the model was not trained on ({tally.excluded} left out)" if tally.excluded else "")
            )
        routed_right += tally.routed_right
        routed_total += len(tally.labels)
        class_model = model.class_models[model.classes.index(data.name)]
        target = class_model.calibration.get("target_frr")
        target_frr = (
            float(target) if isinstance(target, int | float) and not isinstance(target, bool) else None
        )
        per_class[data.name] = class_metrics(tally, class_model.threshold, target_frr)
        # A few-shot threshold was not set on held-out normals: its false-reject rate is this one.
        per_class[data.name]["threshold_approximate"] = bool(
            class_model.calibration.get("threshold_approximate", False)
        )
        del tally
    return {
        "classes": per_class,
        "mean": _mean(per_class),
        "routing_accuracy": round(routed_right / routed_total, 6) if len(classes) > 1 else None,
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 3),
            "p99": round(float(np.percentile(latencies, 99)), 3),
        },
        "excluded_trained_on": sum(m["n_excluded_trained_on"] for m in per_class.values()),
        "training_images_recorded": trained is not None,
        "pixel_metrics": {
            "maps": "raw anomaly map at each image's own resolution",
            "method": f"streamed histograms of {1 << HISTOGRAM_BITS} float bins",
        },
    }


def _mean(per_class: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def average(values: list[Any]) -> float | None:
        present = [v for v in values if v is not None]
        return round(float(np.mean(present)), 6) if present else None

    mean: dict[str, Any] = {key: average([m[key] for m in per_class.values()]) for key in METRIC_KEYS}
    mean["tpr_at_fpr"] = {
        str(fpr): average([m["tpr_at_fpr"][str(fpr)] for m in per_class.values()]) for fpr in OPERATING_FPRS
    }
    for key in ("n_good", "n_defect", "n_defect_without_mask", "n_excluded_trained_on"):
        mean[key] = sum(m[key] for m in per_class.values())
    mean["threshold_approximate"] = any(m["threshold_approximate"] for m in per_class.values())
    return mean
