"""The coordinator's side of federated evaluation (`fedsim.protocol.evaluation`): ask
every hospital for its sealed histograms, have the aggregator sum them and the key
holders open the sum, read the pooled metrics (and, with DP, their epsilon)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.errors import NoReceipt, PartyLost, ProtocolError
from fedsim.learning.histograms import ScoreBins, pooled_metrics, youden_threshold
from fedsim.learning.metrics import BinaryMetrics
from fedsim.learning.selection import Selection
from fedsim.protocol.evaluation import EvaluationPlan


@dataclass(frozen=True)
class PooledEvaluation:
    """What one federated evaluation yields: metrics on the pooled test histogram at the
    pooled-validation Youden edge, the AUC bound, and the two summed histograms."""

    metrics: BinaryMetrics
    auc_bound: float
    val: np.ndarray
    test: np.ndarray
    seconds: dict[str, float]

    def roc(self, bins: ScoreBins, *, max_points: int = 200) -> dict[str, list[float]]:
        """ROC points of the pooled test histogram, one per bin edge (``roc_points``'s
        layout)."""
        c = bins.count
        neg, pos = self.test[:c], self.test[c: 2 * c]
        if not neg.sum() or not pos.sum():
            return {"fpr": [], "tpr": []}
        tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / pos.sum()])
        fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / neg.sum()])
        keep = np.concatenate([[True], np.diff(fpr) + np.diff(tpr) > 0])
        fpr, tpr = fpr[keep], tpr[keep]
        if len(fpr) > max_points:  # thinned as `fedsim.learning.metrics.roc_points`
            idx = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
            fpr, tpr = fpr[idx], tpr[idx]
        return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def pooled(val: np.ndarray, test: np.ndarray, bins: ScoreBins,
           seconds: dict[str, float]) -> PooledEvaluation:
    """Metrics of the summed histograms (thresholded at the validation Youden edge; 0.5
    without validation rows, as the central evaluator)."""
    threshold = youden_threshold(val, bins) if val[-1] > 0 else 0.5
    result = pooled_metrics(test, bins, threshold=threshold)
    return PooledEvaluation(result.metrics, result.auc_bound, val, test, seconds)


def open_hospital_sum(federation: Any, round_idx: int, method: str, args: tuple,
                      timer: Any, *, kind: str = "evaluate") -> tuple[np.ndarray, dict, Any]:
    """Every hospital's sealed batch (its ``method`` called with ``args``), summed by the
    aggregator, endorsed by every hospital and opened by the key holders: the opened
    values, what each hospital said in plaintext (by role) and the sum's manifest."""
    from fedsim.protocol.schemes import AGGREGATOR

    b = federation.backend
    roles = federation.population.party_roles
    calls = {role: b.call(role, method, *args, num_returns=2) for role in roles}
    bundles = [calls[role][0] for role in roles]
    manifest_h, _, seconds_h = b.call(AGGREGATOR, "sum_evaluation", round_idx, *bundles,
                                      kind=kind, num_returns=3)
    said = {role: b.get(calls[role][1]) for role in roles}
    manifest, aggregated = b.get([manifest_h, seconds_h])
    batches = dict(zip(manifest.contributors, manifest.digests, strict=True))
    endorsements: dict[str, bytes] = {}
    for h in [b.call(role, "endorse_evaluation", round_idx, batches, kind=kind)
              for role in roles]:
        endorsements.update(b.get(h))
    values = federation.scheme.open_evaluation(b, manifest, timer, bundles=bundles,
                                               endorsements=endorsements)
    timer.add("aggregate", aggregated)
    return values, said, manifest


class FederatedEvaluator:
    """The coordinator's side: ask every hospital for its sealed histograms, have the
    aggregator sum them and the key holders open the sum, read the pooled metrics.

    ``holdout``: a public test set no hospital holds (a benchmark's), scored here with
    ``model`` instead of the hospitals' test splits; the threshold still comes from the
    hospitals' summed validation histograms."""

    def __init__(self, plan: EvaluationPlan, *, model: Any = None, holdout: Any = None,
                 selection: Selection | None = None) -> None:
        self.plan = plan
        self.selection = selection or Selection(False)
        self.model = model
        self.holdout = holdout
        self.epsilon: float | None = None  # of the noised histograms released so far
        # Evaluations asked of the hospitals in this run, every session and re-run round
        # counted (the runner persists it): what the evaluation epsilon composes.
        self.released = 0
        self.on_release: Callable[[int], None] | None = None
        self.disclosed: dict[str, dict] = {}  # hospital -> its own metrics, if it told

    def score_round(self, federation: Any, round_idx: int
                    ) -> tuple[BinaryMetrics, dict[str, float]] | None:
        """The pooled metrics of the model after ``round_idx`` and their extra columns
        (``auc_bound``, the evaluation's phases), or None when a hospital is lost (an
        evaluation holds every hospital or none: it is skipped, with a warning)."""
        from fedsim.protocol.records import PhaseTimer

        if federation.lost:
            federation.warnings.append(f"round {round_idx}: evaluation skipped: "
                                       f"{', '.join(federation.lost)} gone")
            return None
        timer = PhaseTimer()
        ref = federation.backend.put(federation.state.params)
        self.released += 1  # counted before it is asked: a failed one may have released
        if self.on_release is not None:
            self.on_release(self.released)
        try:
            values, said, _ = open_hospital_sum(federation, round_idx, "evaluate",
                                                (round_idx, ref, self.plan), timer)
        except PartyLost as err:
            federation.warnings.append(f"round {round_idx}: evaluation skipped: {err}")
            return None
        val, test = self.plan.decode(federation.scheme.context, values)
        timer.add("score", max(s["score"] for s in said.values()))
        timer.add("encrypt", max(s["encrypt"] for s in said.values()))
        self.disclosed = {role.split(":", 1)[1]: s["metrics"] for role, s in said.items()
                          if "metrics" in s}
        result = pooled(val, test, self.plan.bins, dict(timer.phases))
        val_auc = (pooled_metrics(val, self.plan.bins).metrics.auc
                   if val[-1] > 0 else float("nan"))
        params = federation.params
        self.selection.offer(round_idx, val_auc, params,
                             lambda: self._report(result, round_idx, params))
        metrics = (result.metrics if self.holdout is None else
                   BinaryMetrics(**_metrics_of(self.selection.last.report["pooled"])))
        extra = {"auc_bound": result.auc_bound if self.holdout is None else 0.0,
                 "val_auc": val_auc,
                 **{f"t_evaluate_{k}_s": v for k, v in timer.phases.items()}}
        if self.plan.noise_stddev:  # record-level DP on the histograms, composed so far
            self.epsilon = self.plan.epsilon(self.released, federation.cfg.privacy.delta)
            extra["evaluation_epsilon"] = self.epsilon
        return metrics, extra

    def _report(self, r: PooledEvaluation, round_idx: int, params: Any) -> dict:
        """The metrics of the model evaluated after ``round_idx``: pooled test metrics
        with ROC points from the summed histogram (or the public holdout), and each
        hospital's own metrics only as far as it disclosed them."""
        if self.holdout is not None:
            from fedsim.learning.metrics import evaluate, roc_points
            from fedsim.learning.train import predict

            probs = predict(self.model, params, self.holdout)
            pooled_part = {**evaluate(self.holdout.labels, probs,
                                      threshold=r.metrics.threshold).as_dict(),
                           "roc": roc_points(self.holdout.labels, probs)}
        else:
            pooled_part = {**r.metrics.as_dict(), "roc": r.roc(self.plan.bins),
                           "auc_bound": r.auc_bound}
        return {"threshold": r.metrics.threshold, "evaluation": "federated",
                "evaluated_after_round": round_idx + 1,
                "hospitals": {name: dict(m) for name, m in self.disclosed.items()},
                "pooled": pooled_part}

    def final_report(self, federation: Any) -> dict:
        """metrics.json's content: `_report` of the selected model (the last evaluated
        round's, unless ``evaluation.select: best_val`` chose an earlier one: then the
        last evaluated round's pooled test metrics stand beside it), and the key
        holders' receipts of it."""
        final_round = federation.cfg.federation.rounds - 1
        if self.selection.last is None:  # none yet: a resume after the last release
            self.score_round(federation, final_round)
        last = self.selection.last
        if last is None:
            raise ProtocolError("no federated evaluation of any model (a hospital was "
                                "lost in every evaluated round)")
        chosen = self.selection.chosen(last.round)
        deployed = self.selection.deployed()
        report = copy.deepcopy(deployed.report)
        report["selection"] = self.selection.describe(final_round)
        if chosen is not None:
            report["last_round"] = {"round": last.round + 1,
                                    **_metrics_of(last.report["pooled"])}
        if self.plan.noise_stddev:
            if self.epsilon is None:  # every evaluation was released before a resume
                self.epsilon = self.plan.epsilon(self.released, federation.cfg.privacy.delta)
            report["pooled"]["dp"] = {
                "noise_stddev": self.plan.noise_stddev, "epsilon": self.epsilon,
                "delta": federation.cfg.privacy.delta,
                "against": "whoever reads the pooled histograms or metrics",
                "unit": "one patient of a validation or test split"}
        # The key holders' word on the model every hospital evaluated (`fedsim verify`):
        # the deployed one (the selected round's, else the last evaluated round's).
        try:
            receipts = federation.scheme.receipts(federation.backend, federation.run_id,
                                                  deployed.round, self._bound(deployed))
        except NoReceipt as why:  # its holders restarted or lost since (or a resume)
            report["selection"]["note"] = "; ".join(filter(None, [
                report["selection"].get("note"),
                f"round {deployed.round + 1}'s evaluation: {why} (restarted, lost or "
                "resumed since): the deployed model has no deployment receipt (fedsim "
                "verify cannot attest it)"]))
            return report
        report["deployment"] = {**receipts, "plan": repr(self.plan),
                                "run_id": federation.run_id}
        return report

    def _bound(self, snapshot: Any) -> bytes:
        """The digest every hospital signed its evaluation of ``snapshot``'s model with
        (`EvaluationPlan.bind` of its `model_digest`): what its receipts must name."""
        from jax.flatten_util import ravel_pytree

        from fedsim.crypto.identity import model_digest

        flat, _ = ravel_pytree(snapshot.params)
        return self.plan.bind(model_digest(np.asarray(flat, np.float32), {}))

    def deployed_params(self, federation: Any) -> Any:
        """The parameters the run reports and writes to params.npz: the selected
        evaluated model, never one no hospital scored."""
        deployed = self.selection.deployed()
        if deployed is None:
            raise ProtocolError("no federated evaluation of any model: none to deploy")
        return deployed.params


def _metrics_of(pooled_part: dict) -> dict:
    """The `BinaryMetrics` fields of a report's ``pooled`` block (no ROC, no bound)."""
    from dataclasses import fields

    return {f.name: pooled_part[f.name] for f in fields(BinaryMetrics)}


def evaluator_for(federation: Any, dataset: Any, selection: Selection | None = None) -> Any:
    """Federated evaluation when the run's plan has it (the coordinator then holds no
    hospital's rows), else the coordinator's scoring of pooled copies."""
    if federation.evaluation is not None:
        return FederatedEvaluator(federation.evaluation, model=federation.model,
                                  holdout=dataset.holdout, selection=selection)
    from fedsim.learning.evaluation import CentralEvaluator

    return CentralEvaluator(federation.model, dataset, selection)
