"""Thresholds: from held-out normal images only, or F1-optimal when defective samples are supplied.

Which normal images are held out: by default every one of them, once (``out_of_fold``). The
normal images are split into K folds; a scorer fitted on the other K - 1 folds scores each fold, so
every normal image gets a score from a scorer that never saw it, and the threshold is the
``1 - target`` quantile of all these scores. On magnetic tile (k-NN, lite0) five folds over all 571
normal images put the threshold closer to where 1 % of new normal images are rejected than one 20 %
holdout did (114 images): escapes 0.508 -> 0.424 at the same false-reject rate on the test normals
(docs/benchmarks.md). A fitted tail (generalised Pareto over the top 10 %, or a log-normal body)
did not beat the order statistic there (0.454 and an over-shoot to 1.6 % false rejects), so the
rule stays the plain quantile, with the Gaussian guard below for very few images. A trained network
is not refitted on all images afterwards: where networks score on one scale (labelled
SuperSimpleNet's standardised score) the K fold networks' scores are pooled and the first fold's
network serves; otherwise one held-out share calibrates the network that serves.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

# Held-out scores beyond the target quantile needed before the empirical quantile is trusted alone.
_MIN_TAIL_SAMPLES = 5
# Below this a standard deviation is too uncertain to extrapolate a tail from (chi-square, < 4 dof).
_MIN_GAUSSIAN_SAMPLES = 5


def threshold_at_frr(normal_scores: np.ndarray, target_frr: float) -> float:
    """A threshold that rejects about ``target_frr`` of normal images, from held-out normal scores.

    The empirical quantile is used when the held-out set has enough images beyond it. With fewer
    (say 8 images for a 1% target) it is just the sample maximum, which new normal images exceed
    far more often than ``target_frr``; then a Gaussian tail fitted to the same scores (from 5
    scores up) bounds it from below, so a small calibration set errs towards fewer false rejects.
    """
    scores = np.asarray(normal_scores, dtype=np.float64)
    if len(scores) == 0:
        raise ValueError("calibration needs at least one held-out normal image")
    empirical = float(np.quantile(scores, 1.0 - target_frr, method="higher"))
    if len(scores) < _MIN_GAUSSIAN_SAMPLES or len(scores) * target_frr >= _MIN_TAIL_SAMPLES:
        return empirical
    z = NormalDist().inv_cdf(1.0 - target_frr)
    return max(empirical, float(scores.mean() + z * scores.std(ddof=1)))


def out_of_fold(n_images: int, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint, sorted index sets covering ``range(n_images)`` (a seeded permutation cut
    into near-equal parts); each is scored by a scorer fitted on all the others."""
    if n_images < 2:
        raise ValueError("out-of-fold calibration needs at least 2 normal images")
    if folds < 2:
        raise ValueError("out-of-fold calibration needs at least 2 folds")
    folds = min(folds, n_images)
    order = np.random.default_rng(seed).permutation(n_images)
    return [np.sort(order[i * n_images // folds : (i + 1) * n_images // folds]) for i in range(folds)]


def f1_optimal_threshold(normal_scores: np.ndarray, defect_scores: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1)`` maximising F1 for 'defect' over the supplied normal and defect samples."""
    scores = np.concatenate([normal_scores, defect_scores]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(normal_scores)), np.ones(len(defect_scores))])
    best_threshold, best_f1 = float(scores.max()), 0.0
    for candidate in np.unique(scores):
        predicted = scores >= candidate
        true_pos = float((predicted & (labels == 1)).sum())
        if true_pos == 0:
            continue
        precision = true_pos / predicted.sum()
        recall = true_pos / labels.sum()
        f1 = 2 * precision * recall / (precision + recall)
        if f1 > best_f1:
            best_threshold, best_f1 = float(candidate), float(f1)
    return best_threshold, best_f1
