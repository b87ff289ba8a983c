"""Pooled metrics from summed score histograms against scikit-learn on the same scores."""

from __future__ import annotations

import numpy as np
import pytest
from builders import hospitals_of, scores
from sklearn import metrics as skm

from fedsim.learning.histograms import ScoreBins, histogram, pooled_metrics, youden_threshold
from fedsim.learning.metrics import evaluate

BINS = ScoreBins()


@pytest.mark.parametrize("prevalence", [0.5, 0.05])
def test_summed_histograms_give_the_pooled_metrics_within_the_stated_bound(prevalence):
    val_labels, val_probs = scores(20_000, prevalence, seed=1)
    labels, probs = scores(20_000, prevalence, seed=2)
    val = sum(histogram(y, p, BINS) for y, p in hospitals_of(val_labels, val_probs))
    test = sum(histogram(y, p, BINS) for y, p in hospitals_of(labels, probs))
    pooled = histogram(labels, probs, BINS)  # vectors add: counts exactly, the loss
    np.testing.assert_array_equal(test[:-2], pooled[:-2])  # sum up to float rounding
    np.testing.assert_allclose(test[-2:], pooled[-2:], rtol=1e-12)

    threshold = youden_threshold(val, BINS)
    found = pooled_metrics(test, BINS, threshold=threshold)
    exact = evaluate(labels, probs, threshold=threshold)
    got = found.metrics
    assert 0 < found.auc_bound < 1e-3
    assert abs(got.auc - exact.auc) <= found.auc_bound
    assert abs(got.pr_auc - exact.pr_auc) < 1e-3
    assert got.loss == pytest.approx(exact.loss, rel=1e-12)
    assert (got.n, got.positives) == (exact.n, exact.positives)
    for name in ("balanced_accuracy", "precision", "recall", "accuracy"):
        assert getattr(got, name) == pytest.approx(getattr(exact, name), abs=1e-12), name

    # The threshold is a bin edge; its Youden J is within 1e-3 of the best any score gives.
    fpr, tpr, _ = skm.roc_curve(val_labels, val_probs)
    at = evaluate(val_labels, val_probs, threshold=threshold)
    j_at = 2 * at.balanced_accuracy - 1
    assert np.max(tpr - fpr) - 1e-3 <= j_at <= np.max(tpr - fpr) + 1e-12


def test_a_sum_that_is_not_of_histograms_is_refused():
    vector = histogram(np.array([0, 1]), np.array([0.2, 0.7]), BINS)
    vector[3] = 0.5
    with pytest.raises(ValueError, match="not non-negative integers"):
        pooled_metrics(vector, BINS)
    with pytest.raises(ValueError, match="4096 bins has 8194 values"):
        pooled_metrics(vector[:-1], BINS)
