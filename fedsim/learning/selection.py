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
    """The last evaluated snapshot and, under ``best_val``, the best so far.

    The runner saves both inside each round's checkpoint (`fedsim.run.checkpoint`), so a
    resumed or restarted run keeps choosing among exactly the rounds its checkpoint
    covers, and deploys a model that was evaluated: never one a fault left unscored."""

    def __init__(self, best_val: bool, *, best: Snapshot | None = None,
                 last: Snapshot | None = None) -> None:
        self.best_val = best_val
        self.best = best
        self.last = last

    def rewind(self, best: Snapshot | None, last: Snapshot | None) -> None:
        """Back to a checkpoint's snapshots (what came after it is run again)."""
        self.best = best if self.best_val else None
        self.last = last

    def offer(self, round_idx: int, val_auc: float, params: Any,
              report: Callable[[], dict] | None = None) -> bool:
        """Record this round's evaluated model; True when it is the new best (a NaN
        AUC, a validation split of one class, never wins)."""
        params = jax.tree_util.tree_map(lambda leaf: np.array(leaf, copy=True), params)
        self.last = Snapshot(round_idx, float(val_auc), params,
                             None if report is None else report())
        if not self.best_val or not math.isfinite(val_auc):
            return False
        if self.best is not None and val_auc <= self.best.val_auc:
            return False
        self.best = self.last
        return True

    def deployed(self) -> Snapshot | None:
        """The snapshot a run reports and deploys: the best (``best_val``, once a round
        had a finite validation AUC), else the last evaluated one (None: nothing was)."""
        return self.best if self.best is not None else self.last

    def chosen(self, last_round: int) -> Snapshot | None:
        """The best snapshot when it is not the model after ``last_round`` (None under
        ``last``, with no finite validation AUC, or when the last round is the best)."""
        if self.best is None or self.best.round == last_round:
            return None
        return self.best

    def describe(self, final_round: int) -> dict:
        """metrics.json's ``selection`` block (``final_round``: the run's last round)."""
        deployed = self.deployed()
        out: dict = {"rule": "best_val" if self.best_val else "last",
                     "round": (deployed.round if deployed else final_round) + 1}
        if self.best is not None:
            out["val_auc"] = self.best.val_auc
        notes = []
        if self.best_val and self.best is None:
            notes.append("no evaluated round had a finite pooled validation AUC (a "
                         "validation split of one class?): the last evaluated model is kept")
        if self.last is not None and self.last.round != final_round:
            notes.append(f"the model after round {final_round + 1} (the last) was not "
                         f"evaluated (a hospital was lost then, or the run resumed after "
                         f"its release): the last evaluated round is round "
                         f"{self.last.round + 1}")
        if notes:
            out["note"] = "; ".join(notes)
        return out


def which_model(report: dict, rounds: int) -> str:
    """"final global model", or the deployed round's, for a report's titles (``rounds``:
    the run's)."""
    chosen = report["selection"]["round"]
    if "last_round" in report:
        return (f"model after round {chosen} (best validation AUC; the last evaluated "
                f"round's test AUC: {report['last_round']['auc']:.4f})")
    if chosen != rounds:
        return f"model after round {chosen} (the last evaluated)"
    return "final global model"
