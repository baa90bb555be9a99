from __future__ import annotations

import numpy as np
import torch

from shared.engine.coreset import greedy_coreset, naive_greedy_coreset, random_projection


def covering_radius(points: torch.Tensor, chosen: np.ndarray) -> float:
    return float(torch.cdist(points, points[torch.from_numpy(chosen)]).min(dim=1).values.max())


def test_fast_coreset_selects_what_the_plain_loop_selects() -> None:
    generator = torch.Generator().manual_seed(0)
    # Clustered, anisotropic data like patch features, in more dimensions than the projection.
    centres = torch.randn(30, 200, generator=generator) * 3
    features = centres[torch.randint(30, (6000,), generator=generator)] + torch.randn(
        6000, 200, generator=generator
    )
    fast = greedy_coreset(
        features, 400, projection_dim=64, seed=1, pool_size=512, refresh_size=16, method="lazy"
    )
    plain = naive_greedy_coreset(features, 400, projection_dim=64, seed=1)
    assert len(set(fast.tolist())) == 400
    assert (fast == plain).mean() > 0.98  # identical up to rounding-level ties
    projected = random_projection(features, 64, 1)
    assert covering_radius(projected, fast) <= covering_radius(projected, plain) * 1.001


def test_coreset_edge_cases() -> None:
    features = torch.randn(50, 8)
    np.testing.assert_array_equal(greedy_coreset(features, 80), np.arange(50))
    assert len(greedy_coreset(features, 1)) == 1
    duplicates = torch.ones(100, 8)  # all points identical: any selection is valid, no hang
    for method in ("lazy", "plain"):
        assert len(set(greedy_coreset(duplicates, 5, method=method).tolist())) == 5
