"""Training statistics summed with the updates, never sent one client at a time.

A round's mean training loss and mean update norm are useful progress signals, but one
client's loss or norm is a value about that client. `TrainingStatistics` puts both,
times the client's weight, in reserved slots of its contribution (encrypted with the
update in he mode); the server hook divides the summed slots by the summed weight, so
the coordinator learns the weighted means only, as it learns the averaged update.

Each value is clipped to ``[0, CAP]`` and divided by ``CAP`` first: a slot holds at most
the client's weight, the range the encrypted sum is sized for. A loss or norm above
``CAP`` is counted as ``CAP`` (a diverging run shows as ``CAP``); in he mode the means
carry the scheme's decryption error times ``CAP``.

A DP run leaves this step out: an unnoised sum of losses or norms would be a release
outside the guarantee (`fedsim.protocol.federation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, final

import numpy as np

from fedsim.aggregate.steps import Aggregate, ClientContext, ServerContext, Step, Update

CAP = 8.0
STATISTICS = ("loss", "update_norm")  # Update.metrics names, summed in slots "stat_<name>"


@final
@dataclass(frozen=True)
class TrainingStatistics(Step):
    """The weighted mean training loss and update norm of a round; see the module docstring.

    Runs last on the client (after weighting, whose weight it uses), first on the server.
    """

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(f"stat_{name}" for name in STATISTICS)

    def client(self, update: Update, ctx: ClientContext) -> Update:
        values = {f"stat_{name}": update.weight * float(np.clip(
            update.metrics.get(name, 0.0), 0.0, CAP)) / CAP for name in STATISTICS}
        return update.but(slots=values)

    def server(self, aggregate: Aggregate, state: Any, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        if not aggregate.weight > 0:
            return aggregate, state
        means = {name: CAP * aggregate.slots[f"stat_{name}"] / aggregate.weight
                 for name in STATISTICS}
        return aggregate.but(metrics=means), state
