"""Differential privacy as ordered steps (see `fedsim.aggregate.steps`).

* `ClientLevelDP` (DP-FedAvg, McMahan et al. 2018): on the client, clip the update in
  the mechanism's norm to the round's bound and hand it to the noise placement; on the
  aggregator, the placement's noise; on the server, with adaptive clipping (Andrew et
  al. 2021), the next bound from the noised sum of clipping indicators.
* `ClientLevelAccounting` and `RecordLevelAccounting`: server hooks that report the
  epsilon spent so far (``Aggregate.metrics["epsilon"]``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, final

from fedsim.aggregate.steps import Aggregate, ClientContext, ServerContext, Step, Update
from fedsim.privacy.accountant import Accountant
from fedsim.privacy.adaptive_clipping import (
    AdaptiveClipSpec,
    AdaptiveClipState,
    clip_indicator,
    update_clip,
)
from fedsim.privacy.events import AccountingSpec, RecordLevelSpec
from fedsim.privacy.mechanisms import Mechanism
from fedsim.privacy.placement import AggregatorPlacement, DistributedPlacement

INDICATOR = "clip_indicator"


@final
@dataclass(frozen=True)
class ClientLevelDP(Step):
    """Clip every update and noise the sum; see the module docstring.

    ``mechanism`` holds the initial clip bound and the multiplier of the update noise;
    ``denominator`` is the fixed public divisor of every contribution (the weighting
    step divides the update; this step divides its own slot values and noise). With
    ``adaptive`` the bound starts at ``mechanism.clip`` and never exceeds ``max_clip``.
    """

    mechanism: Mechanism
    placement: AggregatorPlacement | DistributedPlacement
    denominator: float
    adaptive: AdaptiveClipSpec | None = None
    max_clip: float = math.inf

    @property
    def slots(self) -> tuple[str, ...]:
        return (INDICATOR,) if self.adaptive is not None else ()

    def init(self) -> AdaptiveClipState | None:
        return AdaptiveClipState(self.mechanism.clip) if self.adaptive is not None else None

    def round_params(self, state: AdaptiveClipState | None) -> Mapping[str, float]:
        return {"clip": state.clip if state is not None else self.mechanism.clip}

    def _noises(self, params: Mapping[str, float]) -> tuple[Mechanism, dict[str, Mechanism]]:
        if self.adaptive is None:
            return self.mechanism, {}
        return (self.mechanism.with_clip(params["clip"]),
                {INDICATOR: self.adaptive.indicator_noise_spec()})

    def client(self, update: Update, ctx: ClientContext) -> Update:
        vector, slots = self._noises(ctx.params)
        clipped, norm = vector.clip_update(update.vector)
        extra = {}
        if self.adaptive is not None:
            extra[INDICATOR] = clip_indicator(norm, vector.clip) / self.denominator
        update = update.but(vector=clipped, slots=extra, metrics={"update_norm": norm})
        return self.placement.client(update, vector, slots, self.denominator, ctx)

    @property
    def aggregator_noise(self) -> bool:
        return self.placement.at_aggregator

    def noise(self, size: int, ctx: ServerContext) -> Update | None:
        vector, slots = self._noises(ctx.params)
        return self.placement.aggregator(size, vector, slots, self.denominator, ctx)

    def server(self, aggregate: Aggregate, state: Any, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        if self.adaptive is None:
            return aggregate, state
        noised = aggregate.slots[INDICATOR] * self.denominator
        moved = update_clip(state, self.adaptive, noised, self.denominator)
        new = AdaptiveClipState(min(moved.clip, self.max_clip))
        return aggregate.but(metrics={"clip": new.clip}), new


@final
@dataclass(frozen=True)
class ClientLevelAccounting(Step):
    """Epsilon after ``r + 1`` rounds of the client-level mechanism."""

    spec: AccountingSpec

    @functools.cached_property
    def accountant(self) -> Accountant:
        return Accountant(self.spec)

    def server(self, aggregate: Aggregate, state: Any, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        return aggregate.but(metrics={"epsilon": self.accountant.epsilon_after(ctx.round + 1)}
                             ), state


@final
@dataclass(frozen=True)
class RecordLevelAccounting(Step):
    """Record-level epsilon: DP-SGD is per client, so the worst client (most rounds
    taken part in) is reported. State: participations per client, immutable."""

    spec: RecordLevelSpec

    @functools.cached_property
    def accountant(self) -> Accountant:
        return Accountant(self.spec)

    def init(self) -> tuple[tuple[str, int], ...]:
        return ()

    def server(self, aggregate: Aggregate, state: tuple[tuple[str, int], ...],
               ctx: ServerContext) -> tuple[Aggregate, Any]:
        counts = dict(state)
        for name in ctx.contributors:
            counts[name] = counts.get(name, 0) + 1
        worst = max(counts.values(), default=0)
        epsilon = self.accountant.epsilon_after(worst) if worst else 0.0
        return aggregate.but(metrics={"epsilon": epsilon}), tuple(sorted(counts.items()))
