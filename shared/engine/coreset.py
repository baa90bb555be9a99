"""Greedy k-center coreset selection, exact and fast on a few hundred thousand patches.

The classic greedy rule (next centre = the point farthest from all chosen centres) is applied to
randomly projected features, as in PatchCore. A plain implementation touches every point for every
new centre (~450k x 20k distance evaluations). Here points are first grouped into spatial blocks
(k-means); a block whose points cannot get closer to the new centre than they already are to
their nearest centre (triangle inequality on the block's radius) is skipped. The result is the same
selection as the plain loop, at a fraction of the work once the coreset radius has shrunk.
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


def _blocks(points: torch.Tensor, n_blocks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means block assignment of every point and the block centroids."""
    import faiss

    data = points.numpy()
    kmeans = faiss.Kmeans(data.shape[1], n_blocks, niter=6, seed=seed, max_points_per_centroid=64)
    kmeans.train(data)
    _, assignment = kmeans.index.search(data, 1)
    return torch.from_numpy(assignment[:, 0].astype(np.int64)), torch.from_numpy(kmeans.centroids.copy())


def greedy_coreset(
    features: torch.Tensor,
    target: int,
    *,
    projection_dim: int = 128,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Indices of ``target`` rows of ``features`` chosen by greedy k-center, in selection order."""
    n_points = features.shape[0]
    if target >= n_points:
        return np.arange(n_points)
    if target <= 0:
        raise ValueError("coreset target size must be positive")
    points = random_projection(features, projection_dim, seed)
    n_blocks = int(min(max(n_points // 400, 1), 2048))
    if n_blocks > 1:
        block_of, centroids = _blocks(points, n_blocks, seed)
    else:
        block_of, centroids = torch.zeros(n_points, dtype=torch.int64), points.mean(0, keepdim=True)
    # Store points block by block so that each block is one contiguous slice.
    order = torch.argsort(block_of, stable=True)
    points = points[order].contiguous()
    block_of = block_of[order]
    counts = torch.bincount(block_of, minlength=n_blocks)
    starts = torch.cumsum(counts, 0) - counts
    norms = (points * points).sum(1)
    radius = torch.zeros(n_blocks).scatter_reduce(
        0, block_of, (points - centroids[block_of]).norm(dim=1), reduce="amax", include_self=True
    )
    min_dist = torch.full((n_points,), float("inf"))
    block_max = torch.full((n_blocks,), float("inf"))
    chosen = np.empty(target, dtype=np.int64)
    first = int(torch.randint(n_points, (1,), generator=torch.Generator().manual_seed(seed)))
    current = int(torch.argsort(order)[first])  # same first centre as the plain loop
    slack = 1e-4  # guards the pruning test against rounding in the distances
    for step in range(target):
        chosen[step] = current
        centre = points[current]
        lower_bound = (centroids - centre).norm(dim=1) - radius
        active = torch.nonzero(lower_bound < block_max * (1 + slack) + slack).flatten()
        if active.numel() * 2 > n_blocks:  # most blocks touched: update every point without gathering
            dist = (norms - 2 * (points @ centre) + norms[current]).clamp_min_(0).sqrt_()
            torch.minimum(min_dist, dist, out=min_dist)
            block_max = torch.zeros(n_blocks).scatter_reduce(0, block_of, min_dist, reduce="amax")
        else:
            lengths = counts[active]
            offsets = torch.cumsum(lengths, 0) - lengths
            rows = torch.arange(int(lengths.sum())) + torch.repeat_interleave(starts[active] - offsets, lengths)
            dist = (norms[rows] - 2 * (points[rows] @ centre) + norms[current]).clamp_min_(0).sqrt_()
            updated = torch.minimum(min_dist[rows], dist)
            min_dist[rows] = updated
            block_max[active] = torch.zeros(n_blocks).scatter_reduce(
                0, block_of[rows], updated, reduce="amax"
            )[active]
        best_block = int(torch.argmax(block_max))
        start = int(starts[best_block])
        current = start + int(torch.argmax(min_dist[start : start + int(counts[best_block])]))
        if progress is not None and (step + 1) % 1000 == 0:
            progress(1000)
    if progress is not None:
        progress(target % 1000)
    return order[torch.from_numpy(chosen)].numpy()


def naive_greedy_coreset(features: torch.Tensor, target: int, *, projection_dim: int = 128, seed: int = 0) -> np.ndarray:
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
        current = int(torch.argmax(min_dist))
    return np.asarray(chosen, dtype=np.int64)
