from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.learning.metrics import evaluate, roc_points, youden_threshold


def test_metrics_match_hand_computation():
    labels = np.array([0, 0, 0, 0, 1, 1])
    probs = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    m = evaluate(labels, probs, threshold=0.5)
    # predictions at 0.5: [0,0,0,1,1,1]: TP=2 FP=1 TN=3 FN=0
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(1.0)
    assert m.balanced_accuracy == pytest.approx((1.0 + 3 / 4) / 2)
    # pairs (pos, neg) ranked correctly: 0.7 beats 3 of 4, 0.9 beats 4 of 4
    assert m.auc == pytest.approx(7 / 8)
    assert m.n == 6 and m.positives == 2
    expected_loss = -np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
    assert m.loss == pytest.approx(expected_loss)


def test_youden_threshold_separates_perfectly_separable_scores():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.2, 0.3, 0.6, 0.7])
    t = youden_threshold(labels, probs)
    assert 0.3 < t <= 0.6
    assert evaluate(labels, probs, threshold=t).balanced_accuracy == 1.0


def test_single_class_gives_nan_aucs_not_errors():
    m = evaluate(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.9]))
    assert math.isnan(m.auc) and math.isnan(m.pr_auc)
    assert roc_points(np.zeros(4), np.ones(4)) == {"fpr": [], "tpr": []}


def test_roc_points_are_thinned_and_monotone():
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.3
    probs = rng.random(5000)
    pts = roc_points(labels, probs, max_points=50)
    assert len(pts["fpr"]) <= 50
    assert pts["fpr"][0] == 0.0 and pts["fpr"][-1] == 1.0
    assert all(a <= b for a, b in zip(pts["fpr"], pts["fpr"][1:]))
