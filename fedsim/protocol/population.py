"""Which training party simulates which client: one hospital actor each, or cohorts.

``federation.clients: hospital`` starts one `Hospital` per client (role
``client:<name>``); ``cohort`` splits the clients, in federation order, into
``federation.cohorts`` contiguous `Cohort` parties (role ``cohort:<k>``). The round
loop asks a population only for the parties and for who trains where.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.aggregate.steps import Pipeline
from fedsim.config import RunConfig
from fedsim.data import FederatedDataset
from fedsim.protocol.backend import PartySpec
from fedsim.protocol.client import Hospital, ModelShape
from fedsim.protocol.cohort import Cohort


@dataclass(frozen=True)
class Population:
    """Client name -> the role of the party that trains it, and those parties."""

    roles: dict[str, str]
    parties: tuple[PartySpec, ...]

    @property
    def party_roles(self) -> tuple[str, ...]:
        return tuple(p.role for p in self.parties)

    def groups(self, sampled: Sequence[str]) -> dict[str, list[str]]:
        """The sampled clients by training party, each list in sampled order."""
        out: dict[str, list[str]] = {}
        for name in sampled:
            out.setdefault(self.roles[name], []).append(name)
        return out


def hospitals(cfg: RunConfig, dataset: FederatedDataset, shape: ModelShape,
              pipeline: Pipeline, privacy: Any, run_id: str) -> Population:
    specs = tuple(
        PartySpec(role=f"client:{c.name}", cls=Hospital, args=(cfg, c),
                  kwargs={"index": i, "shape": shape, "pipeline": pipeline, "privacy": privacy,
                          "run_id": run_id},
                  resources=cfg.resources.client, kind="client")
        for i, c in enumerate(dataset.clients)
    )
    return Population({c.name: f"client:{c.name}" for c in dataset.clients}, specs)


def cohorts(cfg: RunConfig, dataset: FederatedDataset, shape: ModelShape,
            pipeline: Pipeline, privacy: Any, run_id: str) -> Population:
    k = cfg.federation.cohorts
    bounds = np.linspace(0, len(dataset.clients), k + 1).round().astype(int)
    roles: dict[str, str] = {}
    specs = []
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        members = dataset.clients[a:b]
        role = f"cohort:{j}"
        roles.update({c.name: role for c in members})
        specs.append(PartySpec(
            role=role, cls=Cohort, args=(cfg, members),
            kwargs={"first": int(a), "shape": shape, "pipeline": pipeline,
                    "pad_to": min(len(members), cfg.federation.clients_per_round),
                    "run_id": run_id},
            resources=cfg.resources.client, kind="client"))
    return Population(roles, tuple(specs))


BUILDERS = {"hospital": hospitals, "cohort": cohorts}
