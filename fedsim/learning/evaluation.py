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
from fedsim.learning.selection import Selection
from fedsim.learning.train import predict


class CentralEvaluator:
    """Pooled validation and test data of one run, and the model that scores them."""

    def __init__(self, model: Any, dataset: FederatedDataset,
                 selection: Selection | None = None) -> None:
        self.model = model
        self.dataset = dataset
        self.val = dataset.pooled("val")
        self.test = dataset.test_set()
        self.selection = selection or Selection(False)

    def threshold(self, params: Any) -> float:
        """The pooled-validation Youden point (0.5 without a validation split)."""
        if not len(self.val):
            return 0.5
        return youden_threshold(self.val.labels, predict(self.model, params, self.val))

    def score(self, params: Any) -> BinaryMetrics:
        """Test metrics, thresholded at the pooled-validation Youden point."""
        probs = predict(self.model, params, self.test)
        return evaluate(self.test.labels, probs, threshold=self.threshold(params))

    def val_auc(self, params: Any) -> float:
        """Pooled validation ROC AUC (NaN without both classes in the split)."""
        if not len(self.val) or len(set(self.val.labels.tolist())) < 2:
            return float("nan")
        probs = predict(self.model, params, self.val)
        return evaluate(self.val.labels, probs).auc

    def score_round(self, federation: Any, round_idx: int
                    ) -> tuple[BinaryMetrics, dict[str, float]]:
        """`score` of the federation's model and its pooled validation AUC (the
        interface of `fedsim.protocol.evaluator.FederatedEvaluator`)."""
        params = federation.params
        val_auc = self.val_auc(params)
        self.selection.offer(round_idx, val_auc, params)
        return self.score(params), {"val_auc": val_auc}

    def final_report(self, federation: Any) -> dict:
        """metrics.json's content for the selected model (`fedsim.learning.selection`),
        with the last evaluated round's pooled test metrics beside it when they differ."""
        last = self.selection.last
        final_round = federation.cfg.federation.rounds - 1
        if last is None:  # a resume of a run whose checkpoint holds no evaluation
            self.selection.offer(final_round, self.val_auc(federation.params),
                                 federation.params)
            last = self.selection.last
        chosen = self.selection.chosen(last.round)
        report = {**self.report(self.deployed_params(federation)), "evaluation": "central",
                  "selection": self.selection.describe(final_round)}
        if chosen is not None:
            report["last_round"] = {"round": last.round + 1,
                                    **self.score(last.params).as_dict()}
        return report

    def deployed_params(self, federation: Any) -> Any:
        """The parameters the run reports and writes to params.npz: the selected
        evaluated model (the final one when nothing was evaluated)."""
        deployed = self.selection.deployed()
        return federation.params if deployed is None else deployed.params

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
