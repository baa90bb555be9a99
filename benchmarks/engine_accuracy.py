"""Accuracy of the engine on real industrial images, against a plain PatchCore run in the same process.

    .venv/bin/python -m benchmarks.engine_accuracy --data ../shared/datasets/magnetic_tile

With ``--table``: every scorer x labelled defects x backbone instead (``benchmarks.accuracy_table``).

Both use efficientnet_lite0 (real ImageNet weights), the same input size and the same bank size.
The reference is PatchCore as published: features of stages 2+3 with 3x3 aggregation, greedy
k-center coreset over all training patches, exact 1-NN, image score = re-weighted maximum. The
engine holds 20% of the normal training images out for calibration (the reference does not need
to), and its thresholds come from those only. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import print_report
from services.model_tools.cli import fit_config_from
from shared.engine.backbones import build_timm_model, get_spec, resolve_weights
from shared.engine.config import INDEX_KINDS
from shared.engine.coreset import greedy_coreset
from shared.engine.dataset import discover
from shared.engine.evaluation import evaluate, load_mask
from shared.engine.fitting import fit_model
from shared.engine.images import load_image_file
from shared.engine.metrics import aupro, auroc, pixel_auroc
from shared.engine.postprocess import anomaly_maps, resize_map
from shared.engine.scorers.index import faiss_module


class PlainPatchCore:
    """A short, independent PatchCore (the reference; no engine code on its scoring path)."""

    def __init__(self, input_size: int, bank_size: int) -> None:
        spec = get_spec("efficientnet_lite0")
        self.model = build_timm_model(spec, input_size, resolve_weights(spec, None))
        self.input_size = input_size
        self.bank_size = bank_size

    def features(self, images: list[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        from PIL import Image

        size = self.input_size
        batch = np.stack(
            [np.asarray(Image.fromarray(i).resize((size, size), Image.Resampling.BILINEAR)) for i in images]
        )
        pixels = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
        with torch.inference_mode():
            stage2, stage3 = self.model.forward_intermediates(
                pixels, indices=[2, 3], intermediates_only=True, stop_early=True
            )
            stage2 = F.avg_pool2d(stage2, 3, 1, 1)
            stage3 = F.interpolate(F.avg_pool2d(stage3, 3, 1, 1), size=stage2.shape[-2:], mode="bilinear")
            combined = torch.cat([stage2, stage3], dim=1)
        b, c, h, w = combined.shape
        return combined.permute(0, 2, 3, 1).reshape(b, h * w, c), (h, w)

    def fit(self, paths: list[Path]) -> None:
        faiss = faiss_module()  # the engine's faiss (its OpenBLAS kernel chosen as for the engine)

        chunks = []
        for start in range(0, len(paths), 8):
            chunks.append(self.features([load_image_file(p) for p in paths[start : start + 8]])[0])
        patches = torch.cat(chunks).reshape(-1, chunks[0].shape[-1])
        chosen = greedy_coreset(patches, min(self.bank_size, len(patches)), projection_dim=128, seed=0)
        self.bank = patches[torch.from_numpy(np.sort(chosen))].numpy()
        self.index = faiss.IndexFlatL2(self.bank.shape[1])
        self.index.add(self.bank)

    def score(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        features, grid = self.features([image])
        query = features[0].numpy()
        sq, ids = self.index.search(query, 1)
        patch = np.sqrt(np.maximum(sq[:, 0], 0))
        worst = int(patch.argmax())
        # Re-weighting: s* scaled by how isolated its nearest bank patch is among its 9 neighbours.
        _, neighbours = self.index.search(self.bank[ids[worst]], 9)
        dist = np.linalg.norm(self.bank[neighbours[0]] - query[worst], axis=1)
        weight = 1 - np.exp(patch[worst] - dist.max()) / np.exp(dist - dist.max()).sum()
        amap = anomaly_maps(patch[None], grid, self.input_size, 4.0)[0]
        return float(weight * patch[worst]), resize_map(amap, *image.shape[:2])


def main() -> int:
    if "--table" in sys.argv[1:]:
        from benchmarks.accuracy_table import main as table_main

        return table_main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/datasets/magnetic_tile")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--bank-size", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3], help="engine k values to run")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--index", choices=INDEX_KINDS, default="flat", help="engine's faiss index")
    parser.add_argument("--reduced-dims", type=int, default=50, help="pca-refine: candidate dims")
    parser.add_argument("--refine-factor", type=int, default=8, help="pca-refine: candidates per neighbour")
    parser.add_argument(
        "--bank-from-train-only",
        action="store_true",
        help="engine keeps its calibration images out of the bank (default: refit on all normals)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (data,) = discover(args.data)
    report: dict[str, object] = {
        "data": args.data,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "input_size": args.input_size,
        "bank_size": args.bank_size,
        "engine_index": args.index,
        **(
            {"reduced_dims": args.reduced_dims, "refine_factor": args.refine_factor}
            if args.index == "pca-refine"
            else {}
        ),
        "engine_bank_from_all_normals": not args.bank_from_train_only,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    for k in args.k:
        began = time.perf_counter()
        # input size, bank size, index, reduced dims and refine factor: the options of those names
        config = fit_config_from(
            args, backbone="efficientnet_lite0", k=k, bank_from_all_normals=not args.bank_from_train_only
        )
        model = fit_model({data.name: list(data.train)}, config)
        fit_seconds = time.perf_counter() - began
        result = evaluate(model, [data])
        metrics = result["classes"][data.name]
        report[f"engine_k{k}"] = {
            **metrics,
            "fit_seconds": round(fit_seconds, 1),
            "latency_ms": result["latency_ms"],
        }
        print(f"engine k={k}: {report[f'engine_k{k}']}", flush=True)
    if not args.skip_reference:
        began = time.perf_counter()
        reference = PlainPatchCore(args.input_size, args.bank_size)
        reference.fit(list(data.train))
        fit_seconds = time.perf_counter() - began
        labels, scores, masks, maps = [], [], [], []
        for sample in data.test:
            image = load_image_file(sample.path)
            score, amap = reference.score(image)
            labels.append(sample.is_defect)
            scores.append(score)
            if not sample.is_defect or sample.mask_path is not None:
                masks.append(load_mask(sample, amap.shape))
                maps.append(amap)
        report["plain_patchcore"] = {
            "image_auroc": round(auroc(np.array(labels), np.array(scores)), 6),
            "pixel_auroc": round(pixel_auroc(masks, maps), 6),
            "aupro": round(aupro(masks, maps), 6),
            "fit_seconds": round(fit_seconds, 1),
        }
        print(f"plain PatchCore: {report['plain_patchcore']}", flush=True)
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
