"""Evaluation metrics: image/pixel AUROC, AUPRO (normalised, to a false-positive-rate limit), F1-max."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    labels = np.concatenate([np.asarray(mask).ravel() > 0 for mask in masks])
    scores = np.concatenate([np.asarray(amap, dtype=np.float32).ravel() for amap in maps])
    return auroc(labels, scores)


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    PRO(t) is the mean, over all connected defect regions of all masks, of the share of the
    region's pixels scoring >= t; FPR(t) is the share of defect-free pixels scoring >= t. Both are
    cumulative sums over the pixels sorted by score, so the exact curve comes from one sort.
    """
    weights_parts, negative_parts, score_parts = [], [], []
    n_regions = 0
    for mask, amap in zip(masks, maps, strict=True):
        positive = np.asarray(mask) > 0
        labels, count = ndimage.label(positive)
        weight = np.zeros(positive.shape, dtype=np.float64)
        if count:
            sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
            weight[positive] = 1.0 / sizes[labels[positive]]
        n_regions += count
        weights_parts.append(weight.ravel())
        negative_parts.append(~positive.ravel())
        score_parts.append(np.asarray(amap, dtype=np.float64).ravel())
    if n_regions == 0:
        return float("nan")
    scores = np.concatenate(score_parts)
    weights = np.concatenate(weights_parts) / n_regions
    negatives = np.concatenate(negative_parts)
    n_negative = negatives.sum()
    if n_negative == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    pro = np.cumsum(weights[order])
    fpr = np.cumsum(negatives[order]) / n_negative
    # One curve point per distinct threshold: the last pixel of each run of equal scores.
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    fpr = np.r_[0.0, fpr[last_of_tie]]
    pro = np.r_[0.0, pro[last_of_tie]]
    if fpr[-1] > fpr_limit:
        cut = int(np.searchsorted(fpr, fpr_limit, side="right"))
        pro_at_limit = np.interp(fpr_limit, fpr[cut - 1 : cut + 1], pro[cut - 1 : cut + 1])
        fpr = np.r_[fpr[:cut], fpr_limit]
        pro = np.r_[pro[:cut], pro_at_limit]
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 for 'defect' over every threshold."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(labels[order])
    predicted = np.arange(1, labels.size + 1)
    last_of_tie = np.r_[scores[order][1:] != scores[order][:-1], True]
    precision = true_pos[last_of_tie] / predicted[last_of_tie]
    recall = true_pos[last_of_tie] / labels.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return float(f1.max())


def rates_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(false-reject rate of good images, escape rate of defective images)`` at ``threshold``."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    rejected = scores >= threshold
    frr = float(rejected[~labels].mean()) if (~labels).any() else float("nan")
    escape = float((~rejected[labels]).mean()) if labels.any() else float("nan")
    return frr, escape
