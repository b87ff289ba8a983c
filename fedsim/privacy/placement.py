"""Where client-level DP noise enters the sum: two final placements.

* `AggregatorPlacement` (the seed paper's eq. 4): the aggregator draws the whole noise
  each round and adds it, encrypted, to the sum. The aggregator knows the noise it
  added.
* `DistributedPlacement`: every client adds a share to its own update before
  encrypting; shares are calibrated so that ``min_clients`` of them already make the
  whole noise (more survivors add more noise, never less), and no single party knows
  the total.

Both receive the mechanisms to draw from, already averaged over the public denominator
the contributions were divided by (`Mechanism.averaged`): one for the update vector and
one per named reserved slot (a clipping indicator). Contributions and noise are on
the same lattice, so a sum is an exact lattice point. Every draw is secret randomness
of the party that adds it: a fresh source from the context's
`fedsim.privacy.randomness.NoiseSource` (the OS CSPRNG unless the run is marked
insecure), never derived from the run seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

from fedsim.aggregate.steps import ClientContext, ServerContext, Update
from fedsim.privacy.mechanisms import Mechanism
from fedsim.privacy.randomness import NoiseSource

_SECRET = NoiseSource()


@final
@dataclass(frozen=True)
class AggregatorPlacement:
    """The aggregator adds the whole noise."""

    at_aggregator = True

    def describe(self, min_clients: int) -> str:
        return "by the aggregator"

    def client(self, update: Update, vector: Mechanism, slots: Mapping[str, Mechanism],
               ctx: ClientContext) -> Update:
        return update

    def aggregator(self, size: int, vector: Mechanism, slots: Mapping[str, Mechanism],
                   ctx: ServerContext) -> Update:
        source = ctx.randomness or _SECRET
        noise = vector.sample(source.draw("dp-central", ctx.round), size)
        extra = {}
        for i, (name, mech) in enumerate(slots.items()):
            draw = mech.sample(source.draw("dp-central-slot", ctx.round, i), 1)
            extra[name] = float(draw[0])
        return Update(noise, weight=0.0, slots=extra)


@final
@dataclass(frozen=True)
class DistributedPlacement:
    """Each client adds a share; ``min_clients`` shares make the whole noise."""

    min_clients: int
    at_aggregator = False

    def describe(self, min_clients: int) -> str:
        return f"in shares by the clients (full noise from {min_clients} surviving clients)"

    def client(self, update: Update, vector: Mechanism, slots: Mapping[str, Mechanism],
               ctx: ClientContext) -> Update:
        source = ctx.randomness or _SECRET
        noised = update.vector + vector.share(source.draw("dp-share", ctx.round, ctx.index),
                                              update.vector.size, self.min_clients)
        extra = {}
        for i, (name, mech) in enumerate(slots.items()):
            share = mech.share(source.draw("dp-share-slot", ctx.round, ctx.index, i), 1,
                               self.min_clients)
            extra[name] = update.slots.get(name, 0.0) + float(share[0])
        return update.but(vector=noised, slots=extra)

    def aggregator(self, size: int, vector: Mechanism, slots: Mapping[str, Mechanism],
                   ctx: ServerContext) -> Update | None:
        return None
