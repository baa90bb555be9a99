"""How exact the non-flat faiss indexes are on real patch features (magnetic tile, efficientnet_lite0).

    .venv/bin/python -m benchmarks.index_recall --data ../shared/datasets/magnetic_tile

The bank is a greedy k-center coreset of the training images' patch features, as ``lineguard fit``
builds it; the queries are every patch of the test images (good and defective). For each index
kind: recall@1 (the exact nearest bank patch is the one returned), the largest and the mean
relative error of the 1-NN distance (the patch score), the error of the image score (max patch
score per image) and the search time per 1000 queries, against exact search in the same run.
Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import print_report, print_row
from shared.engine.backbones import get_spec, resolve_weights
from shared.engine.config import FitConfig
from shared.engine.coreset import greedy_coreset
from shared.engine.dataset import discover
from shared.engine.features import make_extractor
from shared.engine.images import load_image_file
from shared.engine.scorers.index import KnnBank, build_index, set_search_threads


def features_of(paths: list[Path], extractor: object, batch: int = 16) -> np.ndarray:
    chunks = []
    for start in range(0, len(paths), batch):
        images = [load_image_file(p) for p in paths[start : start + batch]]
        features, _ = extractor(images)  # type: ignore[operator]
        chunks.append(features.numpy())
    return np.concatenate(chunks)


def timed_search(bank: KnnBank, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    bank.search(queries[:256], 1)  # warm-up
    began = time.perf_counter()
    dist, ids = bank.search(queries, 1)
    return dist[:, 0], ids[:, 0], (time.perf_counter() - began) / len(queries) * 1000 * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--bank-size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_search_threads(args.threads)
    (data,) = discover(args.data, None)
    config = FitConfig()
    extractor = make_extractor(config, resolve_weights(get_spec(config.backbone), None))
    rng = np.random.default_rng(0)
    train = [
        data.train[i]
        for i in sorted(rng.choice(len(data.train), min(args.train_images, len(data.train)), replace=False))
    ]
    test_paths = [sample.path for sample in data.test]
    with torch.inference_mode():
        train_features = features_of(train, extractor)
        test_features = features_of(test_paths, extractor)
    patches = torch.from_numpy(train_features.reshape(-1, train_features.shape[-1]))
    chosen = greedy_coreset(patches, min(args.bank_size, len(patches)), seed=0)
    bank = patches[torch.from_numpy(np.sort(chosen))].numpy()
    n_images, n_patches, dim = test_features.shape
    queries = test_features.reshape(-1, dim)

    exact_dist, exact_ids, exact_us = timed_search(KnnBank(build_index(bank, "flat"), 1), queries)
    exact_image = exact_dist.reshape(n_images, n_patches).max(axis=1)
    variants: list[tuple[str, dict[str, object]]] = [
        (f"pca-refine d={d} x{f}", {"kind": "pca-refine", "reduced_dims": d, "refine_factor": f})
        for d in (dim // 4, dim // 3, dim // 2)
        for f in (4, 8, 16)
    ] + [("hnsw", {"kind": "hnsw"}), ("ivf", {"kind": "ivf"})]
    results: dict[str, dict[str, float]] = {"flat (exact)": {"us_per_query": round(exact_us, 2)}}
    for name, options in variants:
        index = build_index(bank, **options)  # type: ignore[arg-type]
        dist, ids, us = timed_search(KnnBank(index, 1), queries)
        relative = (dist - exact_dist) / np.maximum(exact_dist, 1e-6)
        image = dist.reshape(n_images, n_patches).max(axis=1)
        results[name] = {
            "recall_at_1": round(float((ids == exact_ids).mean()), 5),
            "max_patch_score_error": round(float(relative.max()), 5),
            "mean_patch_score_error": round(float(relative.mean()), 7),
            "max_image_score_error": round(float(((image - exact_image) / exact_image).max()), 5),
            "us_per_query": round(us, 2),
            "speedup": round(exact_us / us, 2),
        }
        print_row(name, results[name])
    report = {
        "machine": f"{platform.machine()}, {args.threads} threads",
        "backbone": config.backbone,
        "feature_dim": dim,
        "bank": len(bank),
        "queries": len(queries),
        "test_images": n_images,
        "results": results,
    }
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
