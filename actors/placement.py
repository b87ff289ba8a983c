"""Where the run's actors go: capacity checks and placement groups.

- Clients and the aggregator share one PACK placement group: Ray reserves all their
  resources at once (gang scheduling) and fills as few nodes as it can, so clients
  that share a GPU (``num_gpus: 0.25``) share one node.
- Key holders get their own STRICT_SPREAD placement group, one bundle per holder,
  so no node ever holds two secret-key shares and one compromised machine yields no
  quorum. The SPREAD *scheduling strategy* is only a preference (Ray co-locates when
  a node looks busier); node affinity would pin holders to node ids we pick, without
  an atomic reservation. A STRICT_SPREAD group is the one that Ray either honours as
  a whole or refuses, and its ``ready()`` reference lets us wait with a timeout.
- With fewer fitting nodes than key holders, ``keyholder_spread: strict`` refuses to
  start and ``best_effort`` warns and falls back to a (soft) SPREAD group.
- Every group is awaited with a timeout; a group that is not placed in time is
  removed and the run fails, naming what the cluster lacks. It never hangs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from fedsim.config import ResourceSpec
from fedsim.errors import ProtocolError
from fedsim.protocol.backend import PartySpec

# A bundle must ask for something; actors that ask for nothing get this sliver of CPU.
_MIN_CPU = 0.001
_ROLE_KEY = {"client": "resources.client", "aggregator": "resources.aggregator",
             "keyholder": "resources.keyholder"}
_FIELD = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory_mb"}


def bundle(res: ResourceSpec) -> dict[str, float]:
    """The Ray resource bundle of one actor."""
    out: dict[str, float] = {"CPU": res.num_cpus or _MIN_CPU}
    if res.num_gpus:
        out["GPU"] = res.num_gpus
    if res.memory_mb:
        out["memory"] = float(res.memory_mb * 2**20)
    return out


def _fmt(resources: dict[str, float]) -> str:
    parts = []
    for key, value in resources.items():
        if key == "memory":
            parts.append(f"memory {value / 2**20:g} MiB")
        else:
            parts.append(f"{key} {value:g}")
    return ", ".join(parts)


def _fits(node: dict[str, float], need: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def check_capacity(parties: Sequence[PartySpec]) -> None:
    """Refuse, before any actor starts, a request the cluster can never satisfy.

    Checks the sum per resource and that each role's actor fits on some node; the
    message names the role's config key, what it asks for and what the cluster has.
    """
    nodes = alive_nodes()
    have: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            have[key] = have.get(key, 0.0) + value
    problems = []
    total: dict[str, float] = {}
    by_kind: dict[str, ResourceSpec] = {}  # one resource spec per role in the config
    for p in parties:
        by_kind.setdefault(p.kind, p.resources)
        for key, value in bundle(p.resources).items():
            total[key] = total.get(key, 0.0) + value
    for kind, res in by_kind.items():
        one = bundle(res)
        if not any(_fits(node, one) for node in nodes):
            lacking = {k: v for k, v in one.items() if max(
                (n.get(k, 0.0) for n in nodes), default=0.0) + 1e-9 < v}
            largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in lacking}
            keys = ", ".join(f"{_ROLE_KEY[kind]}.{_FIELD[k]}" for k in lacking)
            problems.append(f"each {kind} asks for {_fmt(lacking)} ({keys}) but no node "
                            f"has that much (largest: {_fmt(largest)})")
    for key, value in total.items():
        if value > have.get(key, 0.0) + 1e-9:
            problems.append(f"the run needs {_fmt({key: value})} in all, the cluster has "
                            f"{_fmt({key: have.get(key, 0.0)})}")
    if problems:
        raise ProtocolError("cannot place the run's actors: " + "; ".join(problems))


@dataclass
class Placement:
    """The placement groups of one run and which bundle each role uses."""

    groups: list[PlacementGroup]
    slots: dict[str, tuple[PlacementGroup, int]]

    def remove(self) -> None:
        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:  # already gone with the cluster; nothing left to free
                pass
        self.groups.clear()


def plan(run_id: str, parties: Sequence[PartySpec], *, spread: str, timeout_s: float,
         warn: Callable[[str], None]) -> Placement:
    """Reserve resources for every party, or fail within ``timeout_s`` saying why."""
    check_capacity(parties)
    packed = [p for p in parties if p.kind != "keyholder"]
    holders = [p for p in parties if p.kind == "keyholder"]
    # Decide (and maybe refuse) before reserving anything, so a refusal leaks nothing.
    strategy = _holder_strategy(holders, spread=spread, warn=warn) if holders else ""
    placement = Placement([], {})
    requests: list[tuple[PlacementGroup, str, list[PartySpec]]] = []
    if packed:
        group = placement_group([bundle(p.resources) for p in packed], strategy="PACK",
                                name=f"{run_id}/parties")
        requests.append((group, "PACK", packed))
    if holders:
        group = placement_group([bundle(p.resources) for p in holders], strategy=strategy,
                                name=f"{run_id}/keyholders")
        requests.append((group, strategy, holders))
    for group, _, members in requests:
        placement.groups.append(group)
        for i, p in enumerate(members):
            placement.slots[p.role] = (group, i)
    refs = {group.ready(): (strategy, members) for group, strategy, members in requests}
    _, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if late:
        placement.remove()
        raise ProtocolError(_unplaced_message(*refs[late[0]], timeout_s))
    return placement


def _holder_strategy(holders: Sequence[PartySpec], *, spread: str,
                     warn: Callable[[str], None]) -> str:
    need = bundle(holders[0].resources)
    fitting = sum(_fits(node, need) for node in alive_nodes())
    if fitting >= len(holders):
        return "STRICT_SPREAD"
    message = (f"{len(holders)} key holders but only {fitting} node(s) can host one "
               f"({_fmt(need)} each): some node will hold more than one secret-key share, "
               f"so compromising it yields more shares than intended")
    if spread == "strict":
        raise ProtocolError(message + "; add nodes or set resources.keyholder_spread: "
                            "best_effort")
    warn(message + " (resources.keyholder_spread is best_effort)")
    return "SPREAD"


def _unplaced_message(strategy: str, members: Sequence[PartySpec], timeout_s: float) -> str:
    need: dict[str, float] = {}
    for p in members:
        for key, value in bundle(p.resources).items():
            need[key] = need.get(key, 0.0) + value
    free = ray.available_resources()
    short = {k: v for k, v in need.items() if free.get(k, 0.0) + 1e-9 < v}
    roles = ", ".join(p.role for p in members[:4]) + (" ..." if len(members) > 4 else "")
    if short:
        why = (f"they need {_fmt(short)}, the cluster has "
               f"{_fmt({k: free.get(k, 0.0) for k in short})} free")
    else:
        why = f"they need {_fmt(need)} laid out {strategy}, which no set of nodes offers"
    if strategy == "STRICT_SPREAD":
        why += f" ({len(members)} distinct nodes with {_fmt(bundle(members[0].resources))} free)"
    return (f"actors not placed within {timeout_s:g}s (resources.placement_timeout_s): "
            f"{roles}: {why}")
