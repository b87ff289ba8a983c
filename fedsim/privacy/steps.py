"""Differential privacy as ordered steps (see `fedsim.aggregate.steps`).

* `ClientLevelDP` (DP-FedAvg, McMahan et al. 2018): on the client, clip the update in
  the mechanism's norm to the round's bound and hand it to the noise placement; on the
  aggregator, the placement's noise; on the server, with adaptive clipping (Andrew et
  al. 2021), the next bound from the noised sum of clipping indicators.
* `ClientLevelAccounting` and `RecordLevelAccounting`: server hooks that report the
  epsilon spent so far against two adversaries (``epsilon_observer``: sees only the
  released models; ``epsilon_participants``: the coordinator and the aggregator, who
  see who took part), and ``epsilon``, the one the run's target is set against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, final

import numpy as np

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

    def _noises(self, params: Mapping[str, float]
                ) -> tuple[Mechanism, Mechanism, dict[str, Mechanism]]:
        """The round's mechanism (at its clip bound), and the averaged mechanisms (over the
        denominator) whose lattice and noise the contributions and the sum live on."""
        vector = (self.mechanism if self.adaptive is None
                  else self.mechanism.with_clip(params["clip"]))
        slots = {} if self.adaptive is None else {
            INDICATOR: self.adaptive.indicator_noise_spec().averaged(self.denominator)}
        return vector, vector.averaged(self.denominator), slots

    def client(self, update: Update, ctx: ClientContext) -> Update:
        # Clip, divide by the denominator and round to the averaged lattice: the noise is
        # drawn on the same lattice, so every sum is an exact lattice point.
        vector, averaged, slots = self._noises(ctx.params)
        contribution, norm = vector.clip_update(update.vector, self.denominator)
        extra = {}
        if self.adaptive is not None:
            gamma, _ = slots[INDICATOR].lattice(1)
            value = clip_indicator(norm, vector.clip) / self.denominator
            extra[INDICATOR] = float(np.trunc(value / gamma) * gamma)  # |.| <= 1/(2m)
        update = update.but(vector=contribution, slots=extra, metrics={"update_norm": norm})
        return self.placement.client(update, averaged, slots, ctx)

    @property
    def aggregator_noise(self) -> bool:
        return self.placement.at_aggregator

    def noise(self, size: int, ctx: ServerContext) -> Update | None:
        _, averaged, slots = self._noises(ctx.params)
        return self.placement.aggregator(size, averaged, slots, ctx)

    def server(self, aggregate: Aggregate, state: Any, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        if self.adaptive is None:
            return aggregate, state
        noised = aggregate.slots[INDICATOR] * self.denominator
        moved = update_clip(state, self.adaptive, noised, self.denominator)
        new = AdaptiveClipState(min(moved.clip, self.max_clip))
        return aggregate.but(metrics={"clip": new.clip}), new


Counts = tuple[tuple[str, int], ...]  # participations per client, sorted (immutable state)


def _counted(state: Counts, contributors: tuple[str, ...]) -> tuple[Counts, int]:
    counts = dict(state)
    for name in contributors:
        counts[name] = counts.get(name, 0) + 1
    return tuple(sorted(counts.items())), max(counts.values(), default=0)


@final
@dataclass(frozen=True)
class ClientLevelAccounting(Step):
    """Client-level epsilon after each round, against two adversaries.

    * ``epsilon_observer``: a party that sees only the released models. The sampling is
      secret from it, so the spec's sampled event composes over every round so far,
      rounds skipped for too few clients included; the smaller of that and the
      participants' figure (both are valid upper bounds).
    * ``epsilon_participants``: the coordinator and the aggregator, who see who took
      part: the base event, no amplification, over the rounds the most-sampled client
      took part in.

    ``epsilon`` repeats the one ``against`` names. State: participations per client.

    ``amplified`` False (`fedsim.privacy.plan.observer_view` says when) gives the
    observer the participants' figure; ``observer_delta`` is the delta its sampled
    epsilon is computed at (the run's, less what skipped rounds may reveal). With
    ``participants_bounded`` False (plaintext: they see every update) the participants'
    epsilon is infinite.
    """

    spec: AccountingSpec
    against: str = "participants"
    amplified: bool = True
    observer_delta: float | None = None
    participants_bounded: bool = True

    @functools.cached_property
    def observer(self) -> Accountant:
        return Accountant(replace(self.spec, delta=self.observer_delta or self.spec.delta))

    @functools.cached_property
    def participants(self) -> Accountant:
        return Accountant(self.spec.participants())

    def init(self) -> Counts:
        return ()

    def _metrics(self, rounds: int, worst: int) -> dict[str, float]:
        # The unsampled composition over the rounds a client took part in bounds every
        # party (the sample is data-independent); the observer also gets the sampled
        # bound when it holds, and the smaller of two valid bounds is valid. (dp-
        # accounting's bound for sampling without replacement at large q can exceed
        # the unsampled one.)
        unsampled = self.participants.epsilon_after(worst)
        observer = (min(self.observer.epsilon_after(rounds), unsampled) if self.amplified
                    else unsampled)
        out = {"epsilon_observer": observer,
               "epsilon_participants": unsampled if self.participants_bounded else math.inf}
        out["epsilon"] = out[f"epsilon_{self.against}"]
        return out

    def server(self, aggregate: Aggregate, state: Counts, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        state, worst = _counted(state, ctx.contributors)
        return aggregate.but(metrics=self._metrics(ctx.round + 1, worst)), state

    def skipped(self, state: Counts, ctx: ServerContext) -> tuple[dict[str, float], Counts]:
        _, worst = _counted(state, ())
        return self._metrics(ctx.round + 1, worst), state

    def charged(self, state: Counts, ctx: ServerContext) -> Counts:
        return _counted(state, ctx.contributors)[0]


@final
@dataclass(frozen=True)
class RecordLevelAccounting(Step):
    """Record-level epsilon: DP-SGD is per client, each at its own rate and multiplier
    (``hospitals``: name and `RecordLevelSpec`). Every client's epsilon after the rounds
    it took part in is reported as ``epsilon[<name>]``, and the worst as ``epsilon``.
    State: participations per client, immutable."""

    hospitals: tuple[tuple[str, RecordLevelSpec], ...]

    @functools.cached_property
    def accountants(self) -> dict[str, Accountant]:
        return {name: Accountant(spec) for name, spec in self.hospitals}

    def init(self) -> Counts:
        return ()

    def _metrics(self, state: Counts) -> dict[str, float]:
        # The record sampling and the noise are the hospital's secrets: both adversaries
        # see the same Poisson-sampled DP-SGD steps (client sampling is not credited).
        counts = dict(state)
        each = {name: accountant.epsilon_after(counts.get(name, 0))
                for name, accountant in self.accountants.items()}
        epsilon = max(each.values(), default=0.0)
        return {"epsilon": epsilon, "epsilon_observer": epsilon,
                "epsilon_participants": epsilon,
                **{f"epsilon[{name}]": value for name, value in each.items()}}

    def server(self, aggregate: Aggregate, state: Counts, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        state, _ = _counted(state, ctx.contributors)
        return aggregate.but(metrics=self._metrics(state)), state

    def skipped(self, state: Counts, ctx: ServerContext) -> tuple[dict[str, float], Counts]:
        return self._metrics(state), state

    def charged(self, state: Counts, ctx: ServerContext) -> Counts:
        return _counted(state, ctx.contributors)[0]
