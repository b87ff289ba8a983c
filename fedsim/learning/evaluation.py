"""Scoring the global model on pooled held-out data (the coordinator's central evaluation:
plaintext runs and cohorts; he runs of hospitals evaluate federated,
`fedsim.protocol.evaluation`).

The decision threshold is the Youden point on the pooled validation split (0.5
without one), applied unchanged to the test set: the dataset's holdout when it has
one, the clients' pooled test splits otherwise.
"""

from __future__ import annotations

from typing import Any

from fedsim.data import FederatedDataset
from fedsim.learning.metrics import BinaryMetrics, evaluate, roc_points, youden_threshold
from fedsim.learning.train import predict


class CentralEvaluator:
    """Pooled validation and test data of one run, and the model that scores them."""

    def __init__(self, model: Any, dataset: FederatedDataset) -> None:
        self.model = model
        self.dataset = dataset
        self.val = dataset.pooled("val")
        self.test = dataset.test_set()

    def threshold(self, params: Any) -> float:
        """The pooled-validation Youden point (0.5 without a validation split)."""
        if not len(self.val):
            return 0.5
        return youden_threshold(self.val.labels, predict(self.model, params, self.val))

    def score(self, params: Any) -> BinaryMetrics:
        """Test metrics, thresholded at the pooled-validation Youden point."""
        probs = predict(self.model, params, self.test)
        return evaluate(self.test.labels, probs, threshold=self.threshold(params))

    def score_round(self, federation: Any, round_idx: int
                    ) -> tuple[BinaryMetrics, dict[str, float]]:
        """`score` of the federation's model (the interface of
        `fedsim.protocol.evaluator.FederatedEvaluator`)."""
        return self.score(federation.params), {}

    def final_report(self, federation: Any) -> dict:
        return {**self.report(federation.params), "evaluation": "central"}

    def report(self, params: Any) -> dict:
        """Per-hospital (those with a test split) and pooled test metrics with ROC points."""
        threshold = self.threshold(params)
        report: dict = {"threshold": threshold, "hospitals": {}}
        for c in self.dataset.clients:
            if len(c.test):
                probs = predict(self.model, params, c.test)
                report["hospitals"][c.name] = {
                    **evaluate(c.test.labels, probs, threshold=threshold).as_dict(),
                    "roc": roc_points(c.test.labels, probs),
                }
        probs = predict(self.model, params, self.test)
        report["pooled"] = {
            **evaluate(self.test.labels, probs, threshold=threshold).as_dict(),
            "roc": roc_points(self.test.labels, probs),
        }
        return report
