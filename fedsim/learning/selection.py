"""Model selection (``evaluation.select``): which evaluated round's model a run reports
and deploys.

``last`` keeps the model after the last round. ``best_val`` keeps, as the seed paper
did, the model of the evaluated round with the highest pooled validation ROC AUC (the
hospitals' summed validation histograms in federated evaluation, the pooled validation
split otherwise; ties keep the earlier round), and the run reports test metrics at that
round and at the last one. Test metrics never choose: a round is kept on its validation
score alone, so the reported test AUC of the selected model is not optimistically biased
by the selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np


@dataclass(frozen=True)
class Snapshot:
    """One evaluated round's model: its parameters (host copies), pooled validation AUC
    and, where the evaluator computed it then, its report (federated evaluation: test
    metrics can only be read when that round's sum is opened)."""

    round: int
    val_auc: float
    params: Any
    report: dict | None = None


class Selection:
    """The best snapshot so far under ``best_val`` (nothing is kept under ``last``).

    ``on_change``, when set, is called with each new best snapshot (the runner saves it
    beside the checkpoint, so a resumed run still knows its best round)."""

    def __init__(self, best_val: bool, *, best: Snapshot | None = None) -> None:
        self.best_val = best_val
        self.best = best
        self.on_change: Callable[[Snapshot], None] | None = None

    def offer(self, round_idx: int, val_auc: float, params: Any,
              report: Callable[[], dict] | None = None) -> bool:
        """Keep this round's model if it validates better than the best so far (a NaN
        AUC, a validation split of one class, never wins); True when it was kept."""
        if not self.best_val or not math.isfinite(val_auc):
            return False
        if self.best is not None and val_auc <= self.best.val_auc:
            return False
        params = jax.tree_util.tree_map(lambda leaf: np.array(leaf, copy=True), params)
        self.best = Snapshot(round_idx, float(val_auc), params,
                             None if report is None else report())
        if self.on_change is not None:
            self.on_change(self.best)
        return True

    def chosen(self, last_round: int) -> Snapshot | None:
        """The snapshot to report and deploy instead of the last round's model, or None
        (``last``, no finite validation AUC, or the last round is the best)."""
        if self.best is None or self.best.round == last_round:
            return None
        return self.best

    def describe(self, last_round: int) -> dict:
        """metrics.json's ``selection`` block."""
        chosen = self.chosen(last_round)
        out: dict = {"rule": "best_val" if self.best_val else "last",
                     "round": (chosen.round if chosen else last_round) + 1}
        if self.best is not None:
            out["val_auc"] = self.best.val_auc
        if self.best_val and self.best is None:
            out["note"] = ("no evaluated round had a finite pooled validation AUC (a "
                           "validation split of one class?): the last model is kept")
        return out


def which_model(report: dict) -> str:
    """"final global model", or the selected round's, for a report's titles."""
    if "last_round" not in report:
        return "final global model"
    return (f"model after round {report['selection']['round']} (best validation AUC; "
            f"the last round's test AUC: {report['last_round']['auc']:.4f})")
