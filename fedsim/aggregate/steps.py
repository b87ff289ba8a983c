"""Ordered steps between a client's update and the server optimizer (pfl's postprocessors).

A `Step` has a pair of hooks: ``client`` turns one client's `Update` into what it
contributes (clip it, add a noise share, weight it), and ``server`` turns the opened
sum, an `Aggregate`, into what the server optimizer takes (average it, account for
it). A run's steps apply in order on every client and in reverse on the server, so
each step undoes or accounts for its own work: weighting multiplies on the client and
divides on the server. Two more hooks serve steps that need them: ``noise`` (what the
aggregator adds to the sum, for noise placed there) and ``round_params`` (public
values every client needs this round, e.g. the current clip bound). A step's state,
if any, is explicit and immutable, in the optax style: ``init`` makes it, ``server``
returns the next one.

Reserved slots: a step that needs a number summed along with the updates (a count, a
clipping indicator) names it in ``slots``; the encoding carries each named slot (and
the weight) in reserved slots of the packed vector, encrypted with the update in he
mode, so no such number crosses in the clear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RoundContext:
    """What every sampled client learns about a round besides the global parameters."""

    round: int
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientContext:
    """One client in one round: its name, index in the federation and sample count.

    ``randomness`` is where the party's secret draws come from
    (`fedsim.privacy.randomness.NoiseSource`; None: the OS CSPRNG).
    """

    client: str
    index: int
    round: int
    num_examples: int
    randomness: Any = None
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerContext:
    """The server side of one round: who contributed; ``randomness`` as for a client."""

    round: int
    contributors: tuple[str, ...]
    randomness: Any = None
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """One contribution on its way through the client hooks (or the aggregator's noise).

    ``vector`` is float64 [num_params]; ``weight`` and every named ``slots`` value are
    summed by the aggregator alongside it; ``metrics`` stay with the client's report.
    """

    vector: np.ndarray
    weight: float = 1.0
    slots: Mapping[str, float] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def but(self, **changes: Any) -> Update:
        """A copy with ``changes``; ``slots``/``metrics`` given here are merged in."""
        for name in ("slots", "metrics"):
            if name in changes:
                changes[name] = {**getattr(self, name), **changes[name]}
        return replace(self, **changes)


@dataclass(frozen=True)
class Aggregate:
    """The opened sum on its way through the server hooks.

    ``metrics`` collects what server hooks report (epsilon, the next clip bound).
    """

    vector: np.ndarray
    weight: float
    slots: Mapping[str, float]
    contributors: tuple[str, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)

    def but(self, **changes: Any) -> Aggregate:
        if "metrics" in changes:
            changes["metrics"] = {**self.metrics, **changes["metrics"]}
        return replace(self, **changes)


class Step:
    """One ordered step; every hook defaults to doing nothing. Subclasses are final."""

    @property
    def slots(self) -> tuple[str, ...]:
        """Names of the reserved slots this step's client hook fills.

        A slot value is bounded like a weight: at most ``1/m`` per contribution (divide
        by the expected number of clients), so an encrypted sum stays in range.
        """
        return ()

    def init(self) -> Any:
        """This step's initial state (None for stateless steps)."""
        return None

    def round_params(self, state: Any) -> Mapping[str, float]:
        """Public per-round values the clients need, from the current state."""
        return {}

    def client(self, update: Update, ctx: ClientContext) -> Update:
        return update

    @property
    def aggregator_noise(self) -> bool:
        """True if ``noise`` has the aggregator add something (the sum needs room)."""
        return False

    def noise(self, size: int, ctx: ServerContext) -> Update | None:
        """What the aggregator adds to the sum this round, if anything."""
        return None

    def server(self, aggregate: Aggregate, state: Any, ctx: ServerContext
               ) -> tuple[Aggregate, Any]:
        return aggregate, state

    def skipped(self, state: Any, ctx: ServerContext) -> tuple[Mapping[str, float], Any]:
        """A round that released nothing (too few clients sampled): metrics and state."""
        return {}, state

    def charged(self, state: Any, ctx: ServerContext) -> Any:
        """A round whose release was lost (the run died after decrypting it): the state
        with its privacy cost counted, and nothing else changed."""
        return state


@dataclass(frozen=True)
class Pipeline:
    """A run's steps: client hooks in order, server hooks in reverse."""

    steps: tuple[Step, ...]

    @property
    def slots(self) -> tuple[str, ...]:
        """Every step's reserved slots, in step order (the weight comes after them)."""
        return tuple(name for step in self.steps for name in step.slots)

    @property
    def adds_noise(self) -> bool:
        """True if some step has the aggregator add noise (it needs room in the sum)."""
        return any(s.aggregator_noise for s in self.steps)

    def init(self) -> tuple[Any, ...]:
        return tuple(step.init() for step in self.steps)

    def round_params(self, states: Sequence[Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for step, state in zip(self.steps, states, strict=True):
            out.update(step.round_params(state))
        return out

    def client(self, update: Update, ctx: ClientContext) -> Update:
        for step in self.steps:
            update = step.client(update, ctx)
        return update

    def noise(self, size: int, ctx: ServerContext) -> Update | None:
        """The steps' noise for one round, summed into one contribution (or None)."""
        total: Update | None = None
        for step in self.steps:
            more = step.noise(size, ctx)
            if more is None:
                continue
            if total is None:
                total = more
            else:
                slots = {k: total.slots.get(k, 0.0) + more.slots.get(k, 0.0)
                         for k in {*total.slots, *more.slots}}
                total = Update(total.vector + more.vector, total.weight + more.weight, slots)
        return total

    def server(self, aggregate: Aggregate, states: Sequence[Any], ctx: ServerContext
               ) -> tuple[Aggregate, tuple[Any, ...]]:
        new = list(states)
        for i in reversed(range(len(self.steps))):
            aggregate, new[i] = self.steps[i].server(aggregate, new[i], ctx)
        return aggregate, tuple(new)

    def skipped(self, states: Sequence[Any], ctx: ServerContext
                ) -> tuple[dict[str, float], tuple[Any, ...]]:
        """Every step's `Step.skipped`, in server order: merged metrics, new states."""
        new, metrics = list(states), {}
        for i in reversed(range(len(self.steps))):
            more, new[i] = self.steps[i].skipped(new[i], ctx)
            metrics.update(more)
        return metrics, tuple(new)

    def charged(self, states: Sequence[Any], ctx: ServerContext) -> tuple[Any, ...]:
        """Every step's `Step.charged`: a lost release counted in the privacy ledger."""
        return tuple(step.charged(state, ctx)
                     for step, state in zip(self.steps, states, strict=True))


def flat_payload(update: Update, slots: Sequence[str]) -> np.ndarray:
    """``[vector..., slots in order..., weight]`` as one float64 vector (plaintext wire form)."""
    out = np.empty(update.vector.size + len(slots) + 1, np.float64)
    out[: update.vector.size] = update.vector
    for i, name in enumerate(slots):
        out[update.vector.size + i] = update.slots.get(name, 0.0)
    out[-1] = update.weight
    return out


def split_payload(payload: np.ndarray, num_values: int, slots: Sequence[str],
                  contributors: tuple[str, ...]) -> Aggregate:
    """The inverse of `flat_payload` for a summed payload."""
    if payload.size != num_values + len(slots) + 1:
        from fedsim.errors import ProtocolError

        raise ProtocolError(f"aggregate has {payload.size} values, expected "
                            f"{num_values + len(slots) + 1}")
    values = {name: float(payload[num_values + i]) for i, name in enumerate(slots)}
    return Aggregate(payload[:num_values], float(payload[-1]), values, contributors)
