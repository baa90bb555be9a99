import numpy as np
import pytest

from shared.engine.calibration import threshold_at_frr


def test_many_heldout_scores_use_the_empirical_quantile() -> None:
    scores = np.arange(1000, dtype=np.float64)
    assert threshold_at_frr(scores, 0.01) == 990.0  # 10 scores (1%) lie at or above it


def test_few_heldout_scores_are_guarded_by_a_gaussian_tail() -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(10.0, 1.0, size=200_000)
    small = normal[:8]
    threshold = threshold_at_frr(small, 0.01)
    assert threshold > small.max()  # the sample maximum alone would under-estimate the tail
    assert threshold == pytest.approx(small.mean() + 2.3263 * small.std(ddof=1), rel=1e-4)
    # On fresh normal images the guarded threshold rejects far fewer than the bare maximum would.
    frr_guarded = float((normal[8:] >= threshold).mean())
    frr_max = float((normal[8:] >= small.max()).mean())
    assert frr_guarded < frr_max and frr_guarded < 0.05


def test_too_few_scores_for_a_tail_and_empty_input() -> None:
    assert threshold_at_frr(np.array([3.0]), 0.01) == 3.0
    assert threshold_at_frr(np.array([1.0, 2.0, 9.0, 3.0]), 0.01) == 9.0  # 4 scores: the maximum
    with pytest.raises(ValueError, match="at least one held-out"):
        threshold_at_frr(np.array([]), 0.01)
