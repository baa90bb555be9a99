"""Choosing k-NN settings on real defects that no test number uses: layers x map blur.

    nice -n 10 .venv/bin/python -m benchmarks.validation --data ../shared/datasets/magnetic_tile \
        --layers 2,3 2,3,4 --blur 0 2 4 6 8 10 12 16

Validation images: the normal training images the engine holds out for calibration (seed 0, 20 %)
and the labelled defects, N per type from ``<class>/test/<type>`` with their masks: the same images
the accuracy table's labelled rows train on and leave out of every number they report. Synthetic
defects drawn on normal images (the few-shot validation's) scored easier than the real ones and
once favoured a backbone that was worse on real defects (docs/benchmarks.md); these are real.

Per layer setting one model is fitted on the other 80 % of the normal images (one calibration
share, the bank not refitted), and every blur is applied to the same raw patch scores. Reported per
setting: image AUROC, the share of defects above the held-out normals' own 1 % and 5 % quantiles
(TPR at 1 % / 5 % FPR), and pixel AUROC and AUPRO over the validation images at frame resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from benchmarks.accuracy_table import INPUT_SIZES, PixelCurves, labelled_choice, tpr_at_fpr
from shared.engine.class_model import maps_and_scores
from shared.engine.config import FitConfig, FitProgress
from shared.engine.dataset import TestSample, discover
from shared.engine.evaluation import load_mask
from shared.engine.fitting import fit_model, split_holdout
from shared.engine.images import load_image_file
from shared.engine.metrics import auroc
from shared.engine.postprocess import resize_map
from shared.engine.scorers.base import ScoreInput


@dataclass
class SettingResult:
    """Image scores and pixel curves of one (layers, blur) setting."""

    scores: list[float] = field(default_factory=list)
    curves: PixelCurves = field(default_factory=PixelCurves)


def _layers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def validate(args: argparse.Namespace) -> list[dict]:
    (data,) = discover(args.data)
    defects = labelled_choice(data.test, args.labelled)
    rows = []
    for layers in args.layers:
        config = FitConfig(
            backbone=args.backbone,
            input_size=INPUT_SIZES.get(args.backbone, 224),
            layers=layers,
            bank_size=args.bank_size,
            calibration_folds=1,
            bank_from_all_normals=False,
        )
        model = fit_model({data.name: list(data.train)}, config, FitProgress())
        _, holdout = split_holdout(len(data.train), config)
        samples = [TestSample(data.train[i], "good", None) for i in holdout] + defects
        results = {blur: SettingResult() for blur in args.blur}
        scorer = model.class_models[0].scorer
        for start in range(0, len(samples), args.batch):
            chunk = samples[start : start + args.batch]
            images = [load_image_file(s.path) for s in chunk]
            features, grid = model.embed(images)
            patch = scorer.score(ScoreInput(features, grid, images))
            # Each mask once per image, whatever the number of blurs (None: a defect without one).
            masks = [
                None if s.is_defect and s.mask_path is None else load_mask(s, image.shape[:2])
                for s, image in zip(chunk, images, strict=True)
            ]
            for blur, result in results.items():
                maps, scores = maps_and_scores(patch, replace(config, blur_sigma=blur))
                result.scores.extend(float(s) for s in scores)
                for mask, amap in zip(masks, maps, strict=True):
                    if mask is not None:
                        result.curves.add(mask, resize_map(amap, *mask.shape))
        labels = np.array([s.is_defect for s in samples])
        for blur, result in results.items():
            scores = np.array(result.scores)
            rows.append(
                {
                    "layers": list(layers),
                    "blur_sigma": blur,
                    "n_normal": int((~labels).sum()),
                    "n_defect": int(labels.sum()),
                    "image_auroc": auroc(labels, scores),
                    "tpr_at_1pct_fpr": tpr_at_fpr(labels, scores, 0.01),
                    "tpr_at_5pct_fpr": tpr_at_fpr(labels, scores, 0.05),
                    "pixel_auroc": result.curves.auroc(),
                    "aupro": result.curves.aupro(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| stages | blur sigma | image AUROC | TPR @ 1 % FPR | TPR @ 5 % FPR | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'+'.join(map(str, r['layers']))} | {r['blur_sigma']:g} | {r['image_auroc']:.4f} | "
            f"{r['tpr_at_1pct_fpr']:.3f} | {r['tpr_at_5pct_fpr']:.3f} | {r['pixel_auroc']:.4f} | "
            f"{r['aupro']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/datasets/magnetic_tile")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--layers", type=_layers, nargs="+", default=[(2, 3), (2, 3, 4)])
    parser.add_argument("--blur", type=float, nargs="+", default=[0.0, 2.0, 4.0, 6.0, 8.0, 12.0])
    parser.add_argument("--labelled", type=int, default=10, help="validation defects per type")
    parser.add_argument("--bank-size", type=int, default=FitConfig.bank_size)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(table(validate(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
