"""Pooled metrics from summed score histograms: evaluation without pooling any rows.

Each hospital scores its own split and contributes one vector (`histogram`): how many
of its negatives and of its positives fall in each of a fixed, public set of bins on
the logit of the predicted probability, its summed log-loss and its row count. Vectors
add: the sum of the hospitals' vectors is the vector of the pooled split, so it can be
summed under encryption and only the sum decrypted. `pooled_metrics` reads every pooled
metric off a summed vector:

* **Thresholded metrics** (balanced accuracy, precision, recall, accuracy) are exact at
  any threshold on a bin edge, and the decision threshold is one: `youden_threshold`
  picks the edge that maximises Youden's J on the (summed) validation vector.
* **ROC AUC** is exact up to pairs of a positive and a negative in the same bin, which
  count one half: the error is at most ``auc_bound`` = half the share of such pairs,
  computed from the same vector and reported with it.
* **PR AUC** (average precision) is scikit-learn's on scores rounded to their bin; its
  error is not bounded in closed form and is measured in the tests (below 1e-3 with
  the default bins on balanced and on 5%-prevalence labels).
* **Log-loss** is exact (the hospitals sum it before encryption), as is ``n``.

The bins: ``count`` equal bins on the logit in ``[-span, span]``, the two outer bins
open-ended. With 4,096 bins on [-16, 16] a bin is 0.0078 wide in logit, 0.002 in
probability around 0.5 and finer towards 0 and 1, where rare outcomes put most scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.learning.metrics import PROB_CLIP, BinaryMetrics, log_losses


@dataclass(frozen=True)
class ScoreBins:
    """Public bins on the logit of a predicted probability (every party uses the same)."""

    count: int = 4096
    span: float = 16.0

    def __post_init__(self) -> None:
        if self.count < 2 or not self.span > 0:
            raise ValueError(f"score bins need count >= 2 and span > 0, got {self}")

    @property
    def size(self) -> int:
        """Length of a histogram vector: negatives, positives, log-loss sum, n."""
        return 2 * self.count + 2

    def edges(self) -> np.ndarray:
        """The ``count - 1`` inner edges, as logits, ascending."""
        return np.linspace(-self.span, self.span, self.count + 1)[1:-1]

    def index(self, probs: np.ndarray) -> np.ndarray:
        """Each probability's bin: edge ``k - 1 <= logit < edge k`` is bin ``k``."""
        p = np.clip(np.asarray(probs, np.float64), PROB_CLIP, 1 - PROB_CLIP)
        return np.searchsorted(self.edges(), np.log(p) - np.log1p(-p), side="right")

    def threshold(self, first_positive_bin: int) -> float:
        """The probability threshold that predicts positive for bins >= the given one."""
        if first_positive_bin <= 0:
            return 0.0
        if first_positive_bin >= self.count:
            return 1.0
        return float(1.0 / (1.0 + np.exp(-self.edges()[first_positive_bin - 1])))


def histogram(labels: np.ndarray, probs: np.ndarray, bins: ScoreBins) -> np.ndarray:
    """One party's vector: ``[negatives per bin, positives per bin, log-loss sum, n]``."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, np.float64).ravel()
    if labels.shape != probs.shape:
        raise ValueError(f"{labels.size} labels for {probs.size} scores")
    where = bins.index(probs)
    out = np.zeros(bins.size)
    out[: bins.count] = np.bincount(where[labels == 0], minlength=bins.count)
    out[bins.count : 2 * bins.count] = np.bincount(where[labels == 1], minlength=bins.count)
    out[-2] = float(np.sum(log_losses(labels, probs)))
    out[-1] = labels.size
    return out


def _counts(vector: np.ndarray, bins: ScoreBins) -> tuple[np.ndarray, np.ndarray]:
    """Negatives and positives per bin, rounded to integers (a decrypted sum carries
    CKKS's small error; a count off by 0.5 or more means the sum was not of histograms)."""
    vector = np.asarray(vector, np.float64)
    if vector.shape != (bins.size,):
        raise ValueError(f"a histogram of {bins.count} bins has {bins.size} values, "
                         f"got {vector.shape}")
    counts = np.rint(vector[: 2 * bins.count])
    if np.any(np.abs(counts - vector[: 2 * bins.count]) >= 0.25) or np.any(counts < 0):
        raise ValueError("histogram counts are not non-negative integers (within 0.25)")
    return counts[: bins.count], counts[bins.count :]


def youden_threshold(vector: np.ndarray, bins: ScoreBins) -> float:
    """The bin edge maximising sensitivity + specificity on a summed validation vector;
    0.5 when one class is absent (as `fedsim.learning.metrics.youden_threshold`)."""
    neg, pos = _counts(vector, bins)
    if not neg.sum() or not pos.sum():
        return 0.5
    # Predict positive for bins >= k: tpr and fpr from the counts at or above k.
    tpr = np.cumsum(pos[::-1])[::-1] / pos.sum()
    fpr = np.cumsum(neg[::-1])[::-1] / neg.sum()
    return bins.threshold(int(np.argmax(tpr - fpr)))


@dataclass(frozen=True)
class HistogramMetrics:
    """Pooled metrics read off a summed histogram, and the stated bound on the AUC."""

    metrics: BinaryMetrics
    auc_bound: float  # |auc - exact auc| <= auc_bound


def pooled_metrics(vector: np.ndarray, bins: ScoreBins, *, threshold: float = 0.5
                   ) -> HistogramMetrics:
    """Every pooled metric of a summed vector, thresholded at ``threshold`` (a bin edge
    from `youden_threshold`, for exact thresholded metrics)."""
    neg, pos = _counts(vector, bins)
    n_neg, n_pos = float(neg.sum()), float(pos.sum())
    n = int(round(float(vector[-1])))
    nan = float("nan")
    if n == 0:
        return HistogramMetrics(
            BinaryMetrics(0, 0, nan, nan, nan, nan, nan, nan, float(threshold), nan), nan)
    # Bins predicted positive: those whose lower edge is at or above the threshold.
    cut = _first_bin_at_or_above(threshold, bins)
    tp, fp = float(pos[cut:].sum()), float(neg[cut:].sum())
    tn = n_neg - fp
    both = n_neg > 0 and n_pos > 0
    if both:
        below = np.cumsum(neg) - neg  # negatives in lower bins
        auc = float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))
        bound = float(0.5 * np.sum(pos * neg) / (n_pos * n_neg))
        balanced = 0.5 * (tp / n_pos + tn / n_neg)
    else:
        auc = bound = balanced = nan
    metrics = BinaryMetrics(
        n=n,
        positives=int(n_pos),
        loss=float(vector[-2]) / n,
        auc=auc,
        pr_auc=_average_precision(neg, pos) if both else nan,
        balanced_accuracy=balanced,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / n_pos if n_pos else 0.0,
        threshold=float(threshold),
        accuracy=(tp + tn) / n,
    )
    return HistogramMetrics(metrics, bound)


def _first_bin_at_or_above(threshold: float, bins: ScoreBins) -> int:
    """The first bin whose every probability is >= ``threshold`` (a bin edge: exact)."""
    if threshold <= 0:
        return 0
    if threshold >= 1:
        return bins.count
    logit = np.log(threshold) - np.log1p(-threshold)
    # Edges are the bins' lower bounds; a threshold within 1e-9 of one is that edge.
    return int(np.searchsorted(bins.edges(), logit - 1e-9, side="left")) + 1


def _average_precision(neg: np.ndarray, pos: np.ndarray) -> float:
    """scikit-learn's average precision with every bin one tied score, from the top."""
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    seen = (tp + fp) > 0
    precision = np.where(seen, tp / np.maximum(tp + fp, 1), 1.0)
    recall_step = pos[::-1] / pos.sum()
    return float(np.sum(recall_step * precision))
