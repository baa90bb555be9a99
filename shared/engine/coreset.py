"""Greedy k-center coreset selection, exact and fast on a few hundred thousand patches.

The classic greedy rule (next centre = the point farthest from all chosen centres) is applied to
randomly projected features, as in PatchCore. A plain implementation updates the distance of every
point to every new centre (~450k x 20k memory-bound vector operations). Only the farthest point
matters, though, and a point's distance to the chosen set only ever shrinks: so each point keeps
an upper bound (its distance when last updated), and only the points whose bound could still be
the maximum are brought up to date, against all centres added since, as one matrix product. The
selection is the same as the plain loop's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def random_projection(features: torch.Tensor, dim: int, seed: int, chunk: int = 65536) -> torch.Tensor:
    """Johnson-Lindenstrauss projection to ``dim`` dimensions (identity if already that small)."""
    if features.shape[1] <= dim:
        return features.float().contiguous()
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=generator) / math.sqrt(dim)
    out = torch.empty(features.shape[0], dim)
    for start in range(0, features.shape[0], chunk):
        out[start : start + chunk] = features[start : start + chunk].float() @ matrix
    return out


def greedy_coreset(
    features: torch.Tensor,
    target: int,
    *,
    projection_dim: int = 128,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    pool_size: int = 4096,
    refresh_size: int = 32,
    method: str = "auto",
) -> np.ndarray:
    """Indices of ``target`` rows of ``features`` chosen by greedy k-center, in selection order."""
    n_points = features.shape[0]
    if target <= 0:
        raise ValueError("coreset target size must be positive")
    if target >= n_points:
        return np.arange(n_points)
    small = n_points * target <= 50_000_000 or target * 4 > n_points
    if method == "plain" or (method == "auto" and small):
        # Small problems, or a coreset that keeps most points: the plain loop is quicker there.
        return naive_greedy_coreset(features, target, projection_dim=projection_dim, seed=seed)
    points = random_projection(features, projection_dim, seed)
    norms = (points * points).sum(1)
    centres = torch.empty(target, points.shape[1])
    centre_norms = torch.empty(target)
    first = int(torch.randint(n_points, (1,), generator=torch.Generator().manual_seed(seed)))
    # bound[i] >= distance of point i to the chosen set; exact for centres [0, seen[i]).
    bound = (norms - 2 * (points @ points[first]) + norms[first]).clamp_min_(0).sqrt_()
    bound[first] = -1.0
    seen = torch.ones(n_points, dtype=torch.int64)
    chosen = np.empty(target, dtype=np.int64)
    chosen[0] = first
    centres[0], centre_norms[0] = points[first], norms[first]
    pool_size = min(pool_size, n_points)
    pool = torch.empty(0, dtype=torch.int64)
    outside_max = float("inf")  # largest bound of any point outside the pool

    def refresh(rows: torch.Tensor, upto: int) -> None:
        # Distances of ``rows`` to the centres they have not seen yet, as one matrix product.
        start = int(seen[rows].min())
        if start >= upto:
            return
        block = centres[start:upto]
        sq = norms[rows, None] - 2 * points[rows] @ block.T + centre_norms[None, start:upto]
        nearest = sq.min(dim=1).values.clamp_min_(0).sqrt_()
        bound[rows] = torch.minimum(bound[rows], nearest)
        seen[rows] = upto

    for step in range(1, target):
        while True:
            if pool.numel() == 0 or float(bound[pool].max()) < outside_max:
                # Rebuild the pool: the points with the largest bounds.
                top = torch.topk(bound, min(pool_size + 1, n_points))
                pool = top.indices[:pool_size]
                outside_max = float(top.values[pool_size]) if n_points > pool_size else float("-inf")
            pool_bounds = bound[pool]
            exact = seen[pool] == step
            stale_bounds = pool_bounds.masked_fill(exact, float("-inf"))
            exact_bounds = pool_bounds.masked_fill(~exact, float("-inf"))
            best = int(torch.argmax(exact_bounds))
            best_value = float(exact_bounds[best])
            # Done when the best up-to-date distance beats every bound that is not up to date.
            if bool(exact.any()) and best_value >= float(stale_bounds.max()) and best_value >= outside_max:
                best_row = pool[best]
                break
            if not bool((~exact).any()):
                pool = torch.empty(0, dtype=torch.int64)  # everything in the pool is below the outside
                continue
            top_k = min(refresh_size, int((~exact).sum()))
            refresh(pool[torch.topk(stale_bounds, top_k).indices], step)
        current = int(best_row)
        chosen[step] = current
        centres[step], centre_norms[step] = points[current], norms[current]
        bound[current] = -1.0  # never chosen twice, even among duplicates
        if progress is not None and (step + 1) % 1000 == 0:
            progress(1000)
    if progress is not None:
        progress(target % 1000)
    return chosen


def naive_greedy_coreset(
    features: torch.Tensor, target: int, *, projection_dim: int = 128, seed: int = 0
) -> np.ndarray:
    """The plain O(N * target) greedy k-center loop; the reference the fast version must equal."""
    points = random_projection(features, projection_dim, seed)
    n_points = points.shape[0]
    current = int(torch.randint(n_points, (1,), generator=torch.Generator().manual_seed(seed)))
    min_dist = torch.full((n_points,), float("inf"))
    norms = (points * points).sum(1)
    chosen = []
    for _ in range(min(target, n_points)):
        chosen.append(current)
        dist = (norms - 2 * (points @ points[current]) + norms[current]).clamp_min_(0).sqrt_()
        torch.minimum(min_dist, dist, out=min_dist)
        min_dist[current] = -1.0  # never chosen twice, even among duplicates
        current = int(torch.argmax(min_dist))
    return np.asarray(chosen, dtype=np.int64)
