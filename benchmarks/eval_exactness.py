"""How far ``lineguard evaluate``'s streamed pixel metrics are from the exact ones, on real data.

    nice -n 10 .venv/bin/python -m benchmarks.eval_exactness --model M --data ../shared/datasets/magnetic_tile

Scores every test image the model was not trained on once, feeds each raw anomaly map (at the
image's own resolution, as ``evaluate`` does) into float-bit histograms of several sizes, and also
keeps every pixel for the exact pixel AUROC and AUPRO (``shared.engine.metrics``, one sort of all
pixels: the memory the streamed path avoids). For comparison it also caps maps and masks to a
longer side of 256 px (the other way to bound memory). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time

import numpy as np
import torch

from benchmarks.harness import print_report
from shared.engine.backbones import file_sha256
from shared.engine.dataset import discover
from shared.engine.evaluation import load_mask, trained_on
from shared.engine.images import load_image_file
from shared.engine.metrics import PixelHistograms, aupro, pixel_auroc
from shared.engine.persistence import load_model
from shared.engine.postprocess import resize_map


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def capped(height: int, width: int, cap: int) -> tuple[int, int]:
    scale = min(1.0, cap / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="../shared/datasets/magnetic_tile")
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 16, 20])
    parser.add_argument("--cap", type=int, default=256, help="longer side of the capped comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    (data,) = discover(args.data)
    trained = trained_on(model) or set()
    streamed = {bits: PixelHistograms(bits) for bits in args.bits}
    capped_histograms = PixelHistograms(20)
    masks: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    stream_seconds = 0.0
    excluded = 0
    for sample in data.test:
        if file_sha256(sample.path) in trained:
            excluded += 1
            continue
        if sample.is_defect and sample.mask_path is None:
            continue
        image = load_image_file(sample.path)
        (result,) = model.score_batch([image])
        assert result.raw_map is not None
        height, width = image.shape[:2]
        began = time.perf_counter()
        full = resize_map(result.raw_map, height, width)
        mask = load_mask(sample, (height, width))
        for histograms in streamed.values():
            histograms.add(mask, full)
        stream_seconds += time.perf_counter() - began
        small = capped(height, width, args.cap)
        capped_histograms.add(load_mask(sample, small), resize_map(result.raw_map, *small))
        masks.append(mask)
        maps.append(full)
    n_pixels = sum(m.size for m in masks)
    began = time.perf_counter()
    exact = {"pixel_auroc": pixel_auroc(masks, maps), "aupro": aupro(masks, maps)}
    exact_seconds = time.perf_counter() - began
    report: dict[str, object] = {
        "model": model.version,
        "images": len(masks),
        "excluded_trained_on": excluded,
        "pixels": n_pixels,
        "exact": {**exact, "seconds": round(exact_seconds, 1)},
        "streamed": {
            str(bits): {
                "pixel_auroc": h.auroc(),
                "aupro": h.aupro(),
                "pixel_auroc_diff": h.auroc() - exact["pixel_auroc"],
                "aupro_diff": h.aupro() - exact["aupro"],
                "histogram_mib": round(3 * 8 * (1 << bits) / 2**20, 2),
            }
            for bits, h in streamed.items()
        },
        "streamed_update_ms_per_image_all_sizes": round(1000 * stream_seconds / max(len(masks), 1), 1),
        f"capped_{args.cap}px": {
            "pixel_auroc": capped_histograms.auroc(),
            "aupro": capped_histograms.aupro(),
            "pixel_auroc_diff": capped_histograms.auroc() - exact["pixel_auroc"],
            "aupro_diff": capped_histograms.aupro() - exact["aupro"],
        },
        "peak_rss_mib_with_every_pixel_held": round(peak_rss_mib()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
