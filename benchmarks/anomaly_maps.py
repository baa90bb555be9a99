"""Anomaly-map cost per image: the engine's one-operator-per-axis maps against the two steps done
directly (upsample the patch grid to the input size, then blur the full map), in the same run.

    .venv/bin/python -m benchmarks.anomaly_maps --repeats 30

Both give the same maps (tests/unit/shared/engine/test_anomaly_maps.py); one thread, batch 8.
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
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
