"""The scorer x labelled-defects x backbone accuracy table of docs/benchmarks.md, in one command.

    nice -n 10 .venv/bin/python -m benchmarks.engine_accuracy --table \
        --data ../shared/datasets/magnetic_tile --results benchmarks/results/accuracy

Every row (one scorer, with 0 or N labelled defects per type, on one backbone) runs in a process of
its own, so its peak RSS is its own; a row whose JSON is already in ``--results`` is not run again
(rows can be run one at a time, e.g. ``--scorers supersimplenet --labelled 10``, and the table is
printed from every JSON found). Labelled runs take N defects per type from ``<class>/test/<type>``
(names sorted, then a seeded choice), train on them with their masks, and leave them out of every
number. The threshold always comes from held-out normal training images only; TPR at 1 % FPR is
the test set's own (an oracle operating point, for comparison only).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.model_tools.cli import fit_config_from
from shared.engine.config import FitConfig, FitProgress
from shared.engine.dataset import ClassData, TestSample, discover
from shared.engine.evaluation import load_mask
from shared.engine.fitting import fit_model
from shared.engine.images import load_image_file
from shared.engine.metrics import auroc, f1_max, rates_at_threshold
from shared.errors import BackboneError

# Table rows: name -> (engine scorer, FitConfig changes).
SCORER_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "knn flat": ("knn", {"index": "flat"}),
    "knn pca-refine": ("knn", {"index": "pca-refine"}),
    # stride-32 stage added and the map blurred more: chosen on real-defect validation (benchmarks.md)
    "knn flat s2-4 blur8": ("knn", {"index": "flat", "layers": (2, 3, 4), "blur_sigma": 8.0}),
    # a 4x larger coreset: better on every column of real-defect validation (benchmarks.md)
    "knn flat bank40k": ("knn", {"index": "flat", "bank_size": 40_000}),
    "patchcore": ("patchcore", {}),
    "gaussian": ("gaussian", {}),
    "supersimplenet": ("supersimplenet", {}),
    "uninet": ("uninet", {}),
}
INPUT_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite2": 260}  # each backbone's native size
BACKBONE_SHORT = {"efficientnet_lite0": "lite0", "efficientnet_lite2": "lite2"}


def labelled_choice(test: list[TestSample], per_type: int, seed: int = 0) -> list[TestSample]:
    """``per_type`` defects of each type: sorted by file name, then a seeded choice (deterministic)."""
    rng = np.random.default_rng(seed)
    chosen: list[TestSample] = []
    for kind in sorted({s.defect_type for s in test if s.is_defect}):
        of_kind = sorted((s for s in test if s.defect_type == kind), key=lambda s: s.path.name)
        picks = rng.choice(len(of_kind), size=min(per_type, len(of_kind)), replace=False)
        chosen.extend(of_kind[i] for i in sorted(picks.tolist()))
    return chosen


class PixelCurves:
    """Pixel AUROC and AUPRO from fixed histograms over the float32 maps' sortable bit patterns
    (2^20 bins: bounded memory whatever the number of images; on magnetic tile equal to the exact
    values to 4 decimals, docs/benchmarks.md)."""

    BITS = 20

    def __init__(self) -> None:
        size = 1 << self.BITS
        self.negative = np.zeros(size, dtype=np.float64)
        self.positive = np.zeros(size, dtype=np.float64)
        self.region_weight = np.zeros(size, dtype=np.float64)  # defect pixels weighted 1/region size
        self.n_regions = 0

    def _bins(self, values: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        # Monotone map float -> unsigned: flip all bits of negatives, the sign bit of positives.
        ordered = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
        return (ordered >> np.uint32(32 - self.BITS)).astype(np.int64)

    def add(self, mask: np.ndarray, amap: np.ndarray) -> None:
        from scipy import ndimage

        bins = self._bins(amap.ravel())
        positive = mask.ravel()
        size = len(self.negative)
        self.negative += np.bincount(bins[~positive], minlength=size)
        self.positive += np.bincount(bins[positive], minlength=size)
        labels, count = ndimage.label(mask)
        if count:
            sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
            flat = labels.ravel()
            self.region_weight += np.bincount(
                bins[positive], weights=1.0 / sizes[flat[positive]], minlength=size
            )
            self.n_regions += count

    def _curve(self, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fpr = np.r_[0.0, np.cumsum(self.negative[::-1]) / self.negative.sum()]
        return fpr, np.r_[0.0, np.cumsum(hits[::-1]) / hits.sum()]

    def auroc(self) -> float:
        fpr, tpr = self._curve(self.positive)
        return float(np.trapezoid(tpr, fpr))

    def aupro(self, limit: float = 0.3) -> float:
        fpr, pro = self._curve(self.region_weight)
        cut = int(np.searchsorted(fpr, limit, side="right"))
        pro_at = np.interp(limit, fpr[cut - 1 : cut + 1], pro[cut - 1 : cut + 1])
        return float(np.trapezoid(np.r_[pro[:cut], pro_at], np.r_[fpr[:cut], limit]) / limit)


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Share of defects above the lowest threshold that rejects at most ``fpr`` of the normals."""
    normal = np.sort(scores[~labels])[::-1]
    allowed = int(np.floor(fpr * len(normal)))
    threshold = normal[allowed] if allowed < len(normal) else -np.inf
    return float((scores[labels] > threshold).mean())


def run_row(data: ClassData, scorer_row: str, labelled: int, backbone: str, args: argparse.Namespace) -> dict:
    scorer, changes = SCORER_ROWS[scorer_row]
    # epochs and bank size: the options of those names
    config = fit_config_from(
        args, backbone=backbone, input_size=INPUT_SIZES.get(backbone, 224), scorer=scorer, **changes
    )
    chosen = labelled_choice(data.test, labelled) if labelled else []
    defects = [
        (s.path, s.mask_path if s.mask_path is not None else np.zeros((1, 1), np.uint8)) for s in chosen
    ]
    progress = _Bars() if args.progress else FitProgress()
    began = time.perf_counter()
    model = fit_model({data.name: list(data.train)}, config, progress, defects={data.name: defects})
    fit_seconds = time.perf_counter() - began
    taken = {s.path for s in chosen}
    test = [s for s in data.test if s.path not in taken]
    threshold = model.class_models[0].threshold
    model.score_batch([load_image_file(test[0].path)])  # warm-up (lazy initialisation)
    scores, labels, types, score_seconds = [], [], [], 0.0
    curves = PixelCurves()
    for start in range(0, len(test), args.batch):
        chunk = test[start : start + args.batch]
        images = [load_image_file(s.path) for s in chunk]
        t0 = time.perf_counter()
        results = model.score_batch(images)
        score_seconds += time.perf_counter() - t0
        for sample, result in zip(chunk, results, strict=True):
            scores.append(result.raw_score)
            labels.append(sample.is_defect)
            types.append(sample.defect_type)
            if not sample.is_defect or sample.mask_path is not None:
                curves.add(load_mask(sample, result.anomaly_map.shape), result.anomaly_map)
    y, s = np.array(labels), np.array(scores)
    frr, escapes = rates_at_threshold(y, s, threshold)
    kinds = np.array(types)
    return {
        "scorer": scorer_row,
        "labelled_per_type": labelled,
        "backbone": backbone,
        "input_size": config.input_size,
        "layers": None if config.layers is None else list(config.layers),
        "blur_sigma": config.blur_sigma,
        "epochs": args.epochs,
        "bank_size": args.bank_size,
        "n_test_good": int((~y).sum()),
        "n_test_defect": int(y.sum()),
        "n_trained_defects": len(chosen),
        "image_auroc": auroc(y, s),
        "pixel_auroc": curves.auroc(),
        "aupro": curves.aupro(),
        "f1_max": f1_max(y, s),
        "false_reject_rate": frr,
        "escape_rate": escapes,
        "escapes_per_type": {
            kind: float((s[kinds == kind] < threshold).mean())
            for kind in sorted(set(types))
            if kind != "good"
        },
        "tpr_at_1pct_fpr": tpr_at_fpr(y, s, 0.01),
        "fit_seconds": round(fit_seconds, 1),
        "ms_per_image": round(1000 * score_seconds / len(test), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "calibration": {k: v for k, v in model.class_models[0].calibration.items() if k != "heldout_scores"},
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
    }


class _Bars(FitProgress):
    def __init__(self) -> None:
        self._bar: Any = None

    def stage(self, name: str, total: int) -> None:
        from tqdm import tqdm

        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=total, desc=name, file=sys.stderr, mininterval=5)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)


def _file(results: Path, scorer_row: str, labelled: int, backbone: str) -> Path:
    short = BACKBONE_SHORT.get(backbone, backbone)
    return results / f"{short}_{scorer_row.replace(' ', '-')}_l{labelled}.json"


def _cell(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    head = (
        "| backbone | scorer | labelled / type | image AUROC | pixel AUROC | AUPRO | F1-max | escapes | "
        "false rejects | TPR @ 1 % FPR | fit s | ms / image | peak RSS MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            where = f"| {BACKBONE_SHORT.get(r['backbone'], r['backbone'])} | {r['scorer']}"
            lines.append(f"{where} | {r['labelled_per_type']} | {r['error']} |||||||||")
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    BACKBONE_SHORT.get(r["backbone"], r["backbone"]),
                    r["scorer"],
                    str(r["labelled_per_type"]),
                    *(_cell(r[k]) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "escape_rate")),
                    _cell(r["false_reject_rate"], 4),
                    _cell(r["tpr_at_1pct_fpr"]),
                    _cell(r["fit_seconds"], 0),
                    _cell(r["ms_per_image"], 1),
                    _cell(r["peak_rss_mib"], 0),
                ]
            )
            + " |"
        )
    return head + "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--data", default="../shared/datasets/magnetic_tile")
    parser.add_argument("--scorers", nargs="+", choices=list(SCORER_ROWS), default=list(SCORER_ROWS))
    parser.add_argument("--labelled", type=int, nargs="+", default=[0, 10], help="defects per type")
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"])
    parser.add_argument("--epochs", type=int, default=None, help="learned scorers (default: theirs)")
    parser.add_argument("--bank-size", type=int, default=FitConfig.bank_size, help="coreset size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/accuracy"))
    parser.add_argument("--row", nargs=3, metavar=("SCORER", "LABELLED", "BACKBONE"), help=argparse.SUPPRESS)
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.row:
        scorer_row, labelled, backbone = args.row[0], int(args.row[1]), args.row[2]
        (data,) = discover(args.data)
        try:
            row = run_row(data, scorer_row, labelled, backbone, args)
        except BackboneError as error:  # e.g. efficientnet_lite2 on a branch without it
            row = {"scorer": scorer_row, "labelled_per_type": labelled, "backbone": backbone}
            row["error"] = str(error)
        out = _file(args.results, scorer_row, labelled, backbone)
        out.write_text(json.dumps(row, indent=1))
        print(json.dumps(row), flush=True)
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    for backbone in args.backbones:
        for labelled in args.labelled:
            for scorer_row in args.scorers:
                if _file(args.results, scorer_row, labelled, backbone).exists():
                    continue
                command = [sys.executable, "-m", "benchmarks.engine_accuracy", "--table"]
                command += ["--row", scorer_row, str(labelled), backbone, "--data", args.data]
                command += ["--results", str(args.results), "--threads", str(args.threads)]
                command += ["--batch", str(args.batch), "--bank-size", str(args.bank_size)]
                command += ["--progress"] if args.progress else []
                if args.epochs is not None:
                    command += ["--epochs", str(args.epochs)]
                print(f"running {scorer_row}, {labelled} labelled/type, {backbone}", flush=True)
                subprocess.run(command, check=True)
    rows = [json.loads(p.read_text()) for p in sorted(args.results.glob("*.json"))]
    print(table(rows))
    return 0
