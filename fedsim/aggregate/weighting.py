"""How client updates are weighted: two final steps with a client and a server half.

* `SampleWeighting` (FedAvg, McMahan et al. 2017): client ``i`` contributes
  ``(n_i / norm) * delta_i`` with ``n_i / norm`` in the weight slot; the server divides
  the sum by the summed weight. ``norm`` is a public normaliser (clients per round
  times the largest sample count) that keeps every weight at most ``1/m``, so packed
  sums stay inside the range CKKS decrypts correctly.
* `FixedDenominator` (client-level DP, McMahan et al. 2018): every client contributes
  ``delta_i / m`` with ``1/m`` in the weight slot, and the server takes the sum as the
  average. Dividing by the realised weight would depend on who took part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, final

import numpy as np

from fedsim.aggregate.steps import Aggregate, ClientContext, ServerContext, Step, Update
from fedsim.errors import ProtocolError


def average(summed: np.ndarray, total_weight: float) -> np.ndarray:
    """Weighted mean from a sum of weighted deltas and the summed weight."""
    if not total_weight > 0:
        raise ProtocolError(f"summed client weight is {total_weight}; cannot average")
    return summed / total_weight


def _weighted(update: Update, weight: float) -> Update:
    return update.but(vector=np.multiply(update.vector, weight), weight=weight)


@final
@dataclass(frozen=True)
class SampleWeighting(Step):
    """FedAvg's sample-count weights; see the module docstring."""

    norm: float

    def client(self, update: Update, ctx: ClientContext) -> Update:
        return _weighted(update, ctx.num_examples / self.norm)

    def server(self, aggregate: Aggregate, state: Any, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        return aggregate.but(vector=average(aggregate.vector, aggregate.weight)), state


@final
@dataclass(frozen=True)
class FixedDenominator(Step):
    """Equal weights over a fixed public denominator; see the module docstring."""

    denominator: float
    # False when an earlier step already divided the vector (client-level DP divides
    # before rounding to its lattice): only the weight slot is set.
    scale_vector: bool = True

    def client(self, update: Update, ctx: ClientContext) -> Update:
        if not self.scale_vector:
            return update.but(weight=1.0 / self.denominator)
        return _weighted(update, 1.0 / self.denominator)
