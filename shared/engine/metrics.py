"""Evaluation metrics: image/pixel AUROC, AUPRO (normalised, to a false-positive-rate limit), F1-max,
TPR at a false-positive rate; exact (every pixel held) and streamed (``PixelHistograms``)."""

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
    return _area_up_to(fpr, pro, fpr_limit)


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Area under the PRO curve ``(fpr, pro)`` (rising, from 0) up to ``fpr_limit``, divided by
    ``fpr_limit``: the curve is cut at the limit, with PRO interpolated there."""
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


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Share of defects detected at the threshold that rejects at most ``fpr`` of the normals.

    The threshold is the ``(k + 1)``-th highest normal score with ``k = floor(fpr * n_normal)``; a
    defect counts as detected when it scores strictly above it, so at most ``k`` normals do. It is
    set on the very normals it is measured on (an oracle): it says how good the scores are at that
    operating point, not what a calibrated threshold achieves.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.all() or not labels.any():
        return float("nan")
    normal = np.sort(scores[~labels])
    allowed = int(np.floor(fpr * len(normal)))
    threshold = normal[len(normal) - allowed - 1]
    return float((scores[labels] > threshold).mean())


def binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate measured as ``successes`` out of ``trials``."""
    from scipy.stats import beta

    if trials <= 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return low, high


def sortable_bins(values: np.ndarray, bits: int) -> np.ndarray:
    """Order-preserving bin of each float32 value: the top ``bits`` bits of its bit pattern made
    sortable as an unsigned integer (negative numbers' bits inverted, positive ones' sign bit set).

    With 20 bits a bin keeps the sign, the exponent and 11 mantissa bits: every bin is at most
    2^-11 (0.05 %) of its values' magnitude wide, at any scale and sign, so no score range has to be
    known in advance. NaN sorts above +inf; -0.0 and 0.0 share a bin (they are equal scores).
    """
    raw = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = 0.0
    negative = raw >= np.uint32(0x80000000)
    sortable = np.where(negative, ~raw, raw | np.uint32(0x80000000))
    return (sortable >> np.uint32(32 - bits)).astype(np.intp)


class PixelHistograms:
    """Pixel AUROC and AUPRO of one class, streamed: one image at a time into fixed-size histograms.

    Memory is ``3 x 2^bits`` numbers (24 MiB at 20 bits) whatever the number and size of the
    images; ``add`` holds one image's pixels at a time. Two histograms count normal and defect
    pixels per score bin. AUPRO needs, per threshold, the mean over defect regions of the share of
    each region's pixels at or above it: weighting each defect pixel by 1 / (its region's size)
    makes that sum one more weighted histogram, so no per-region state is kept. Scores that share a
    bin count as ties (half a pair for AUROC, one curve step for AUPRO): with 20 bits that changed
    neither value by more than 0.00004 from the exact one on magnetic tile (docs/benchmarks.md).
    """

    def __init__(self, bits: int = 20) -> None:
        if not 8 <= bits <= 24:
            raise ValueError("histogram bits must be between 8 and 24")
        self.bits = bits
        size = 1 << bits
        self.normal = np.zeros(size, dtype=np.int64)
        self.defect = np.zeros(size, dtype=np.int64)
        self.region_weight = np.zeros(size, dtype=np.float64)
        self.n_regions = 0
        self.n_images = 0

    def add(self, mask: np.ndarray, amap: np.ndarray) -> None:
        """One image: ``mask`` (nonzero = defect) and its score map, of the same shape."""
        positive = np.asarray(mask) > 0
        if positive.shape != np.shape(amap):
            raise ValueError(f"mask {positive.shape} and map {np.shape(amap)} differ in shape")
        size = 1 << self.bits
        bins = sortable_bins(np.asarray(amap).ravel(), self.bits)
        flat = positive.ravel()
        # One bincount over (bin, label) pairs instead of two over masked copies.
        counts = np.bincount(bins * 2 + flat, minlength=2 * size).reshape(size, 2)
        self.normal += counts[:, 0]
        self.defect += counts[:, 1]
        if flat.any():
            labels, count = ndimage.label(positive)
            sizes = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
            region_of = labels.ravel()[flat]
            self.region_weight += np.bincount(bins[flat], weights=1.0 / sizes[region_of], minlength=size)
            self.n_regions += count
        self.n_images += 1

    def auroc(self) -> float:
        n_defect, n_normal = float(self.defect.sum()), float(self.normal.sum())
        if n_defect == 0 or n_normal == 0:
            return float("nan")
        normal = self.normal.astype(np.float64)
        defect = self.defect.astype(np.float64)
        normal_below = np.cumsum(normal) - normal
        return float(((defect * normal_below).sum() + 0.5 * (defect * normal).sum()) / (n_defect * n_normal))

    def aupro(self, fpr_limit: float = 0.3) -> float:
        """As ``aupro``: the area under PRO over FPR up to ``fpr_limit``, divided by ``fpr_limit``."""
        n_normal = float(self.normal.sum())
        if self.n_regions == 0 or n_normal == 0:
            return float("nan")
        occupied = np.flatnonzero((self.normal + self.defect)[::-1] > 0)  # thresholds, highest first
        fpr = np.r_[0.0, (np.cumsum(self.normal[::-1]) / n_normal)[occupied]]
        pro = np.r_[0.0, (np.cumsum(self.region_weight[::-1]) / self.n_regions)[occupied]]
        return _area_up_to(fpr, pro, fpr_limit)
