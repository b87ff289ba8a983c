"""Binary-classification metrics (scikit-learn) and the decision threshold.

Balanced accuracy, precision and recall need a threshold on the predicted
probability. On imbalanced outcomes 0.5 is arbitrary, so fedsim picks the threshold
that maximises Youden's J (sensitivity + specificity - 1) on the validation split
and applies it unchanged to the test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as skm


@dataclass(frozen=True)
class BinaryMetrics:
    """Scores of one set of predictions; ``roc`` holds (fpr, tpr) points for plotting."""

    n: int
    positives: int
    loss: float
    auc: float
    pr_auc: float
    balanced_accuracy: float
    precision: float
    recall: float
    threshold: float
    accuracy: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


PROB_CLIP = 1e-7  # probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] for the log-loss


def log_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each row's binary cross-entropy, probabilities clipped by `PROB_CLIP`."""
    p = np.clip(probs, PROB_CLIP, 1 - PROB_CLIP)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity; 0.5 when one class is absent."""
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(labels, probs)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def evaluate(labels: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5) -> BinaryMetrics:
    """All scores for ``probs`` against 0/1 ``labels``; AUCs are NaN with one class only,
    every score is NaN without rows."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, np.float64)
    if labels.size == 0:
        nan = float("nan")
        return BinaryMetrics(0, 0, nan, nan, nan, nan, nan, nan, float(threshold), nan)
    pred = (probs >= threshold).astype(np.int64)
    both = len(np.unique(labels)) == 2
    loss = float(np.mean(log_losses(labels, probs)))
    return BinaryMetrics(
        n=int(labels.size),
        positives=int(labels.sum()),
        loss=loss,
        accuracy=float(np.mean(pred == labels)),
        auc=float(skm.roc_auc_score(labels, probs)) if both else float("nan"),
        pr_auc=float(skm.average_precision_score(labels, probs)) if both else float("nan"),
        balanced_accuracy=float(skm.balanced_accuracy_score(labels, pred)) if both
        else float("nan"),
        precision=float(skm.precision_score(labels, pred, zero_division=0)),
        recall=float(skm.recall_score(labels, pred, zero_division=0)),
        threshold=float(threshold),
    )


def roc_points(labels: np.ndarray, probs: np.ndarray, *, max_points: int = 200) -> dict:
    """ROC curve points (thinned to at most ``max_points``) for plotting and storage."""
    if len(np.unique(labels)) < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = skm.roc_curve(labels, probs)
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr]}
