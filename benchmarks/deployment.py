"""A deployment cost model: one measured round, replayed on machines and network links.

This machine runs every party of a round on 2 shared cores; a consortium gives every
hospital, the aggregator, each key holder and the coordinator its own machine and a
network link. `RoundCost` is what one measured round says about each party: its CPU
seconds (psutil, per actor process) and the bytes it sends. `Deployment` says how the
parties are placed (each on its own machine, or all on one machine of ``cores`` cores)
and how fast the links are. `predict` replays the round's data flow as fedsim runs it
(`fedsim.protocol.federation`, `fedsim.protocol.schemes.threshold`) through a fluid
simulation and returns its finish time and where the critical path spends it:

1. the coordinator sends the model to every sampled client;
2. each client trains, encodes, encrypts and serializes (its CPU seconds);
3. each client uploads its batch to the aggregator, which sums it once it has all of
   it (Ray fetches a call's argument whole); several clients' uploads overlap;
4. the aggregator's manifest goes to the coordinator, every client endorses the sum
   (a round trip), and the coordinator asks each key holder to decrypt;
5. only then does each holder fetch the batches, one client's at a time and every
   holder in the same order (from the client: Ray may also serve the aggregator's
   copy, which the model does not count), re-adding each before fetching the next,
   then checks the digest and decrypts its share;
6. the shares go to the coordinator, which fuses them and updates the model.

Compute on a machine is shared equally among its running parties, at most one core
each (fedsim runs one native thread per party); a link has ``bandwidth`` each way per
machine, shared max-min fairly among the flows using it; a message pays ``latency``
once (the calls that start a transfer pay theirs too in fedsim: a few latencies per
round the model leaves out). Also left out: Ray's own CPU (object-store copies,
scheduling; reported as unattributed), a DP round's noise batch (each holder fetches
it from the aggregator: not modelled, so DP variants are projected optimistically),
TCP slow start and packet loss, and disk. A holder's CPU is split between re-adding
and decrypting by the round's ``verify`` and ``partial_decrypt`` phase times (wall
times on the measuring machine: an approximation). `PartyCpuMeter` reads every actor's
process with the local psutil: all Ray nodes must share this machine's OS (as on the
loopback check).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedsim.errors import ConfigError
from fedsim.protocol.schemes import AGGREGATOR  # the aggregator's role

# The critical path's stages, in round order (plaintext has no holders' stages).
STAGES = ("download model", "client compute", "upload to aggregator", "aggregate",
          "aggregate to coordinator", "manifest + endorsements", "holders fetch batches",
          "holders re-add + check", "partial decryption", "shares to coordinator",
          "fuse + server update")
COORDINATOR = "coordinator"
_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_TIMES = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class Deployment:
    """Where the parties run and how they are linked.

    ``bandwidth`` in bytes per second per machine and direction (``inf``: free
    transfers), ``latency`` one way in seconds, ``machines`` ``own`` (every party its
    own machine of ``cores`` cores), ``one`` (all parties on one such machine) or
    ``placed`` (the Ray nodes the parties ran on, ``cores`` each).
    """

    bandwidth: float = 1e9 / 8
    latency: float = 0.02
    cores: float = 1.0
    machines: str = "own"
    # ``machines=placed``: party -> the Ray node it ran on (filled in from the measured
    # run: `benchmarks._federation.Measured.nodes`), each node ``cores`` cores.
    placement: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Deployment:
        """``bandwidth=1Gbit,latency=20ms[,cores=2][,machines=one]``; one-line errors."""
        fields_: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, eq, value = part.partition("=")
            key, value = key.strip().lower(), value.strip().lower()
            if not eq or not value:
                raise ConfigError(f"deployment {spec!r}: {part!r} is not KEY=VALUE")
            if key == "bandwidth":
                fields_[key] = _bandwidth(value, spec)
            elif key == "latency":
                fields_[key] = _duration(value, spec)
            elif key == "cores":
                fields_[key] = _positive(value, "cores", spec)
            elif key == "machines":
                if value not in ("own", "one", "placed"):
                    raise ConfigError(f"deployment {spec!r}: machines must be own, one or "
                                      f"placed, got {value!r}")
                fields_[key] = value
            else:
                raise ConfigError(f"deployment {spec!r}: unknown key {key!r} (bandwidth, "
                                  "latency, cores, machines)")
        return cls(**fields_)  # type: ignore[arg-type]

    def label(self) -> str:
        bw = "inf" if math.isinf(self.bandwidth) else f"{self.bandwidth * 8 / 1e6:g}Mbit"
        where = {"own": "own machines", "one": "one machine",
                 "placed": "the measured Ray nodes"}[self.machines]
        return (f"{where}, {self.cores:g} core(s) each, {bw}, "
                f"{self.latency * 1e3:g} ms")

    def machine(self, party: str) -> str:
        if self.machines == "placed":
            return self.placement.get(party, party)
        return party if self.machines == "own" else "machine"


def _positive(value: str, what: str, spec: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not x > 0:
        raise ConfigError(f"deployment {spec!r}: {what} must be a number > 0, got {value!r}")
    return x


def _bandwidth(value: str, spec: str) -> float:
    if value == "inf":
        return math.inf
    plain = value.removesuffix("/s").replace("bps", "bit")  # 1Gbit/s, 1gbps, 1Gbit
    for unit in sorted(_UNITS, key=len, reverse=True):
        if plain.endswith(unit):
            return _positive(plain[: -len(unit)], "bandwidth", spec) * _UNITS[unit] / 8
    raise ConfigError(f"deployment {spec!r}: bandwidth {value!r} needs a unit "
                      "(e.g. 100Mbit, 1Gbit, 10Gbit/s) or inf")


def _duration(value: str, spec: str) -> float:
    for unit in ("ms", "us", "s"):
        if value.endswith(unit):
            number = value[: -len(unit)]
            if number.strip() in ("0", "0.0"):
                return 0.0
            return _positive(number, "latency", spec) * _TIMES[unit]
    if value in ("0", "0.0"):
        return 0.0
    raise ConfigError(f"deployment {spec!r}: latency {value!r} needs a unit (e.g. 20ms)")


@dataclass(frozen=True)
class RoundCost:
    """What one measured round says each party spent (CPU seconds) and sent (bytes)."""

    clients: Mapping[str, float]  # client party -> CPU-s (train ... serialize)
    upload_bytes: Mapping[str, int]  # client party -> bytes of its batch
    model_bytes: int  # the global model sent to each client
    aggregator_s: float  # the aggregator's CPU-s (summing, digest, DP noise)
    aggregate_bytes: int  # what the aggregator sends the coordinator (plaintext: the sum)
    holders: Mapping[str, float] = field(default_factory=dict)  # holder -> CPU-s
    holder_sum_fraction: float = 0.0  # of a holder's CPU, re-adding and checking
    share_bytes: Mapping[str, int] = field(default_factory=dict)  # holder -> share bytes
    coordinator_s: float = 0.0  # fuse, server update, evaluation (serial)


@dataclass(frozen=True)
class Task:
    name: str
    party: str  # where a compute task runs; a transfer's sender
    amount: float  # CPU-seconds, or bytes for a transfer
    after: tuple[str, ...] = ()
    delay: float = 0.0  # waits this long after its dependencies (a message's latency)
    to: str | None = None  # a transfer's receiver
    stage: str = ""


def round_tasks(cost: RoundCost, latency: float) -> list[Task]:
    """The round's tasks and dependencies, as fedsim runs them (module docstring)."""
    tasks: list[Task] = []
    clients = sorted(cost.clients)
    agg_sums: list[str] = []
    for c in clients:
        tasks.append(Task(f"bcast:{c}", COORDINATOR, cost.model_bytes, (), latency, c,
                          "download model"))
        tasks.append(Task(f"train:{c}", c, cost.clients[c], (f"bcast:{c}",), 0.0, None,
                          "client compute"))
        # Ray fetches add_many's argument whole before the call: sum after the upload.
        tasks.append(Task(f"send:{c}>{AGGREGATOR}", c, cost.upload_bytes[c],
                          (f"train:{c}",), latency, AGGREGATOR, "upload to aggregator"))
        tasks.append(Task(f"work:{c}>{AGGREGATOR}", AGGREGATOR,
                          cost.aggregator_s / len(clients), (f"send:{c}>{AGGREGATOR}",),
                          0.0, None, "aggregate"))
        agg_sums.append(f"work:{c}>{AGGREGATOR}")
    if not cost.holders:
        tasks.append(Task("result", AGGREGATOR, cost.aggregate_bytes, tuple(agg_sums),
                          latency, COORDINATOR, "aggregate to coordinator"))
        tasks.append(Task("fuse", COORDINATOR, cost.coordinator_s, ("result",), 0.0, None,
                          "fuse + server update"))
        return tasks
    # Manifest to the coordinator, endorsements round trip, then the decryption requests.
    tasks.append(Task("manifest", AGGREGATOR, 0.0, tuple(agg_sums), 3 * latency, None,
                      "manifest + endorsements"))
    shares = []
    for h in sorted(cost.holders):
        cpu = cost.holders[h]
        # A holder takes the batches one at a time, every holder in the same order
        # (`KeyHolder._add_signed`): fetch one party's batch, re-add it, then the next.
        prev = "manifest"
        for c in clients:
            fetch, add = f"send:{c}>{h}", f"work:{c}>{h}"
            tasks.append(Task(fetch, c, cost.upload_bytes[c], (prev,),
                              latency if prev == "manifest" else 0.0, h,
                              "holders fetch batches"))
            tasks.append(Task(add, h, cpu * cost.holder_sum_fraction / len(clients),
                              (fetch,), 0.0, None, "holders re-add + check"))
            prev = add
        tasks.append(Task(f"decrypt:{h}", h, cpu * (1 - cost.holder_sum_fraction),
                          (prev,), 0.0, None, "partial decryption"))
        tasks.append(Task(f"share:{h}", h, cost.share_bytes.get(h, 0), (f"decrypt:{h}",),
                          latency, COORDINATOR, "shares to coordinator"))
        shares.append(f"share:{h}")
    tasks.append(Task("fuse", COORDINATOR, cost.coordinator_s, tuple(shares), 0.0, None,
                      "fuse + server update"))
    return tasks


@dataclass(frozen=True)
class Prediction:
    seconds: float
    spans: Mapping[str, tuple[float, float]]  # task -> (start, end)
    critical: Mapping[str, float]  # stage -> seconds on the critical path (with latency)


def predict(cost: RoundCost, deployment: Deployment) -> Prediction:
    tasks = round_tasks(cost, deployment.latency)
    spans = simulate(tasks, deployment)
    return Prediction(max(end for _, end in spans.values()), spans,
                      critical_path(tasks, spans))


def simulate(tasks: Sequence[Task], deployment: Deployment) -> dict[str, tuple[float, float]]:
    """Start and end of every task: a fluid simulation of shared cores and links."""
    by_name = {t.name: t for t in tasks}
    waiting = dict(by_name)
    scheduled: dict[str, float] = {}  # task -> when it may start
    active: dict[str, float] = {}  # task -> amount left
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    now = 0.0
    while waiting or scheduled or active:
        for name, t in list(waiting.items()):
            if all(d in end for d in t.after):
                scheduled[name] = max((end[d] for d in t.after), default=0.0) + t.delay
                del waiting[name]
        if waiting and not (scheduled or active):
            raise ValueError(f"tasks never ready: {sorted(waiting)[:3]}")  # a bad graph
        for name, at in list(scheduled.items()):
            if at <= now + 1e-12:
                del scheduled[name]
                start[name] = now
                active[name] = by_name[name].amount
        rates = _rates([by_name[n] for n in active], deployment)
        instant = [n for n in active if active[n] <= 0 or math.isinf(rates[n])]
        for name in instant:
            del active[name]
            end[name] = now
        if instant:  # their dependents may start now: release them before time moves
            continue
        if not active:
            if scheduled:
                now = min(scheduled.values())
            continue
        dt = min(active[n] / rates[n] for n in active)
        if scheduled:
            dt = min(dt, min(scheduled.values()) - now)
        now += dt
        for n in list(active):
            active[n] -= rates[n] * dt
            if active[n] <= 1e-9 * max(1.0, by_name[n].amount):
                del active[n]
                end[n] = now
    return {n: (start[n], end[n]) for n in by_name}


def _rates(running: Sequence[Task], deployment: Deployment) -> dict[str, float]:
    rates: dict[str, float] = {}
    per_machine: dict[str, list[Task]] = defaultdict(list)
    flows: list[Task] = []
    for t in running:
        if t.to is None:
            per_machine[deployment.machine(t.party)].append(t)
        elif (deployment.machine(t.party) == deployment.machine(t.to)
              or math.isinf(deployment.bandwidth)):
            rates[t.name] = math.inf  # same machine, or free links
        else:
            flows.append(t)
    for group in per_machine.values():
        # Each running party gets an equal share of the machine, at most one core (one
        # native thread per party), split among its own running tasks.
        by_party: dict[str, list[Task]] = defaultdict(list)
        for t in group:
            by_party[t.party].append(t)
        share = min(1.0, deployment.cores / len(by_party))
        for mine in by_party.values():
            for t in mine:
                rates[t.name] = share / len(mine)
    rates.update(_max_min(flows, deployment))
    return rates


def _max_min(flows: Sequence[Task], deployment: Deployment) -> dict[str, float]:
    """Max-min fair rates: each flow uses its sender's uplink and receiver's downlink."""
    links = {t.name: ((deployment.machine(t.party), "up"),
                      (deployment.machine(t.to or ""), "down")) for t in flows}
    capacity: dict[tuple[str, str], float] = defaultdict(lambda: deployment.bandwidth)
    free = set(links)
    rates: dict[str, float] = {}
    while free:
        users: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name in free:
            for link in links[name]:
                users[link].append(name)
        link = min(users, key=lambda k: capacity[k] / len(users[k]))
        fair = capacity[link] / len(users[link])
        for name in users[link]:
            rates[name] = fair
            free.discard(name)
            for other in links[name]:
                capacity[other] -= fair
    return rates


def critical_path(tasks: Sequence[Task], spans: Mapping[str, tuple[float, float]]
                  ) -> dict[str, float]:
    """Seconds per stage along the chain of tasks that ends last: each task's time from
    its latest dependency's end to its own end (so latency and sharing count in it)."""
    by_name = {t.name: t for t in tasks}
    name = max(spans, key=lambda n: spans[n][1])
    out: dict[str, float] = defaultdict(float)
    while True:
        t = by_name[name]
        before = max((spans[d][1] for d in t.after), default=0.0)
        out[t.stage] += spans[name][1] - before
        if not t.after:
            break
        name = max(t.after, key=lambda d: spans[d][1])
    return {s: out[s] for s in STAGES if s in out}


def round_cost(record, party_cpu: Mapping[str, float], share_bytes: Mapping[str, int],
               roles: Mapping[str, str]) -> RoundCost:
    """A measured round's `RoundCost`: its parties' CPU-seconds (`PartyCpuMeter`, by
    role), the bytes it recorded, and the coordinator's serial phases."""
    per_party: dict[str, int] = defaultdict(int)
    for name in record.clients:
        per_party[roles[name]] += 1
    up = int(record.extra["bytes_up_per_client"])
    model = record.bytes_down // max(1, len(record.clients) + len(record.dropped))
    ph = record.phases
    checks = ph.get("verify", 0.0) + ph.get("partial_decrypt", 0.0)
    return RoundCost(
        clients={r: party_cpu[r] for r in per_party},
        upload_bytes={r: up * k for r, k in per_party.items()},
        model_bytes=model,
        aggregator_s=party_cpu.get(AGGREGATOR, 0.0),
        aggregate_bytes=int(record.extra.get("bytes_aggregate", 0)),
        holders={h: party_cpu[h] for h in share_bytes},
        holder_sum_fraction=ph.get("verify", 0.0) / checks if checks else 0.0,
        share_bytes=dict(share_bytes),
        coordinator_s=sum(ph.get(p, 0.0) for p in ("fuse", "server_update", "evaluate")))
