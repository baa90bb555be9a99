"""Anomaly-map cost per image: the engine's one-operator-per-axis maps against the two steps done
directly (upsample the patch grid to the input size, then blur the full map), in the same run.

    .venv/bin/python -m benchmarks.anomaly_maps --repeats 30
    .venv/bin/python -m benchmarks.anomaly_maps --engine   # score_batch with either, same run

Both give the same maps (tests/unit/shared/engine/test_anomaly_maps.py); one thread, batch 8.
``--engine``: a small efficientnet_lite0 model (real weights, 224 px, synthetic fabric, 2k bank,
the default blur) scores batches of 8 with the map step swapped between the two, in alternating
rounds; the ratio is images/s with the engine's maps over images/s with the two steps.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from shared.engine.postprocess import anomaly_maps

CASES = [((28, 28), 224, 4.0), ((28, 28), 224, 8.0), ((33, 33), 260, 8.0), ((16, 16), 224, 8.0)]


def two_step_maps(patch: np.ndarray, grid: tuple[int, int], size: int, sigma: float) -> np.ndarray:
    """The reference: bilinear interpolation to ``size``, then a separable Gaussian blur (radius
    ceil(4 sigma)) over replicate padding."""
    maps = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32)).view(-1, 1, *grid)
    maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        radius = max(1, math.ceil(4 * sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        maps = F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return maps[:, 0].numpy()


def _ms_per_image(
    make: Callable[[np.ndarray, tuple[int, int], int, float], np.ndarray],
    patch: np.ndarray,
    case: tuple[tuple[int, int], int, float],
    repeats: int,
) -> float:
    grid, size, sigma = case
    make(patch, grid, size, sigma)  # warm-up (and the engine's operator cache)
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        make(patch, grid, size, sigma)
        best = min(best, time.perf_counter() - began)
    return 1000 * best / len(patch)


def engine_rounds(rounds: int, batches: int, batch: int) -> None:
    """``score_batch`` images/s with the engine's maps and with the two steps, alternating."""
    from shared.engine import class_model
    from shared.engine.config import FitConfig
    from shared.engine.fitting import fit_model
    from shared.synthetic import render_sample

    rng = np.random.default_rng(0)
    train = [render_sample("fabric", rng, 224)[0] for _ in range(24)]
    model = fit_model({"fabric": train}, FitConfig(bank_size=2000, calibration_folds=1))
    images = [render_sample("fabric", rng, 224, "spot" if i % 2 else None)[0] for i in range(batch)]
    implementations = {"two steps": two_step_maps, "engine": anomaly_maps}
    rates: dict[str, list[float]] = {name: [] for name in implementations}
    print(f"blur sigma {model.config.blur_sigma:g}, batch {batch}, one thread")
    print("| round | two steps images/s | engine images/s | ratio |")
    print("|---|---|---|---|")
    for number in range(rounds):
        for name, make in implementations.items():
            class_model.anomaly_maps = make  # type: ignore[assignment]
            model.score_batch(images)  # warm-up
            began = time.perf_counter()
            for _ in range(batches):
                model.score_batch(images)
            rates[name].append(batches * batch / (time.perf_counter() - began))
        print(
            f"| {number + 1} | {rates['two steps'][-1]:.1f} | {rates['engine'][-1]:.1f} | "
            f"{rates['engine'][-1] / rates['two steps'][-1]:.2f} |"
        )
    class_model.anomaly_maps = anomaly_maps
    ratios = sorted(e / t for e, t in zip(rates["engine"], rates["two steps"], strict=True))
    print(f"median ratio {ratios[len(ratios) // 2]:.2f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--engine", action="store_true", help="score_batch with either map step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40, help="--engine: batches per round and kind")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.engine:
        engine_rounds(args.rounds, args.batches, args.batch)
        return 0
    rng = np.random.default_rng(0)
    print(
        "| grid | input px | sigma | two steps ms / image | engine ms / image | speed-up | max difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for case in CASES:
        grid, size, sigma = case
        patch = rng.gamma(2.0, 3.0, size=(args.batch, grid[0] * grid[1])).astype(np.float32)
        before = _ms_per_image(two_step_maps, patch, case, args.repeats)
        after = _ms_per_image(anomaly_maps, patch, case, args.repeats)
        gap = float(np.abs(two_step_maps(patch, *case) - anomaly_maps(patch, *case)).max())
        print(
            f"| {grid[0]}x{grid[1]} | {size} | {sigma:g} | {before:.3f} | {after:.3f} | "
            f"{before / after:.0f}x | {gap:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
