"""Timing whole fedsim rounds: one `Federation` per setting, on Ray or in-process.

`Session` owns the backend choice and (for Ray) one local Ray for the whole benchmark;
`Session.measure(cfg)` starts the parties, runs warm-up and measured rounds through
fedsim's round loop (`fedsim.protocol.loop.run_rounds`, the loop ``fedsim run`` uses,
with the same evaluation callback) and returns the `RoundRecord`s, with the machine's
CPU-seconds per round and, when asked, peak memory of the driver and of every actor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.config import RunConfig, replace
from fedsim.protocol.evaluator import evaluator_for
from fedsim.protocol.federation import Federation
from fedsim.protocol.loop import Callback, run_rounds
from fedsim.protocol.records import PHASES, RoundRecord
from fedsim.run.callbacks import Evaluate
from fedsim.run.runner import load_dataset, make_backend


@dataclass
class Measured:
    """What one setting produced."""

    records: list[RoundRecord]  # measured rounds only (warm-up excluded)
    warmup: list[RoundRecord]
    num_params: int
    setup_s: float
    peak_rss: dict[str, int] = field(default_factory=dict)  # label -> bytes
    cpu_s: list[float] = field(default_factory=list)  # machine CPU-seconds per measured round
    # With ``parties=True`` (Ray): per measured round, each party's CPU-seconds (by role;
    # the driver as "coordinator") and the key holders' share bytes.
    party_cpu: list[dict[str, float]] = field(default_factory=list)
    share_bytes: list[dict[str, int]] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # client name -> its party
    nodes: dict[str, str] = field(default_factory=dict)  # party -> Ray node id (parties)


def data_key(cfg: RunConfig) -> tuple:
    return (cfg.seed, repr(cfg.data))


class Session:
    """One backend kind for a whole benchmark run; datasets cached by their config."""

    def __init__(self, backend: str = "ray", *, num_cpus: int | None = None) -> None:
        if backend not in ("ray", "inprocess"):
            raise ValueError(f"backend must be 'ray' or 'inprocess', got {backend!r}")
        self.backend = backend
        self.num_cpus = num_cpus
        self._started_ray = False
        self._data: dict[tuple, Any] = {}
        self._runs = 0

    def __enter__(self) -> Session:
        if self.backend == "ray":
            from actors import connect

            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            self._started_ray = connect(num_cpus=self.num_cpus, include_dashboard=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()

    def dataset(self, cfg: RunConfig) -> Any:
        key = data_key(cfg)
        if key not in self._data:
            self._data = {key: load_dataset(cfg)}  # keep one: datasets can be large
        return self._data[key]

    def measure(self, cfg: RunConfig, *, rounds: int, warmup: int = 1,
                memory: bool = False, parties: bool = False) -> Measured:
        """Set up ``cfg``'s parties, run ``warmup`` + ``rounds`` rounds, tear down.

        Round 0 is `prime`'s (never summed); warm-up and measured rounds follow it.
        ``parties`` (Ray only: one process per party) meters each party's CPU.
        """
        if parties and self.backend != "ray":
            raise ValueError("per-party CPU needs the ray backend (a process per party)")
        total = warmup + rounds
        cfg = replace(cfg, [f"federation.rounds={total + 1}"])
        self._runs += 1
        run_id = f"bench{os.getpid()}-{self._runs}"
        dataset = self.dataset(cfg)
        backend = make_backend(self.backend, run_id, cfg)
        sampler = None
        try:
            t0 = time.perf_counter()
            # As `fedsim run`: with federated evaluation the coordinator holds no rows.
            federated = cfg.evaluation.federated_in(cfg.federation)
            federation = Federation(cfg, dataset.withheld() if federated else dataset,
                                    backend, run_id=run_id,
                                    hospital_data=dataset if federated else None)
            federation.setup()
            prime(federation)
            setup_s = time.perf_counter() - t0
            if memory:
                from benchmarks._common import RssSampler

                pids = {"driver": os.getpid(), **_actor_pids(backend)}
                sampler = RssSampler(lambda: pids)
                sampler.__enter__()
            meter = CpuMeter()
            per_party = PartyCpuMeter({"coordinator": os.getpid(), **_actor_pids(backend)}) \
                if parties else None
            nodes = _actor_nodes(backend) if parties else {}
            evaluate = Evaluate(evaluator_for(federation, dataset),
                                every=cfg.evaluation.every, rounds=total + 1)
            done = run_rounds(federation, total + 1,
                              [evaluate, meter, *([per_party] if per_party else [])],
                              start=1)
        finally:
            if sampler is not None:
                sampler.__exit__(None, None, None)
            backend.shutdown()
        return Measured(done[warmup:], done[:warmup], federation.num_params, setup_s,
                        dict(sampler.peak) if sampler is not None else {},
                        meter.seconds[warmup:],
                        per_party.seconds[warmup:] if per_party else [],
                        per_party.shares[warmup:] if per_party else [],
                        dict(federation.population.roles), nodes)


class CpuMeter(Callback):
    """The machine's CPU-seconds per round (after evaluation), whoever spent them."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._before = 0.0

    def on_round_begin(self, federation: Federation, round_idx: int) -> None:
        self._before = busy_cpu_seconds()

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        self.seconds.append(busy_cpu_seconds() - self._before)


class PartyCpuMeter(Callback):
    """Each party's own CPU-seconds per round (its process's user + system time), and
    the key holders' share bytes of the round (`ThresholdCKKS.share_bytes`)."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self._procs = {role: psutil.Process(pid) for role, pid in pids.items()}
        self.seconds: list[dict[str, float]] = []
        self.shares: list[dict[str, int]] = []
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {role: float(sum(p.cpu_times()[:2])) for role, p in self._procs.items()}

    def on_round_begin(self, federation: Federation, round_idx: int) -> None:
        self._before = self._now()

    def after_round(self, federation: Federation, record: RoundRecord) -> None:
        from fedsim.protocol.schemes.threshold import holder_role

        now = self._now()
        self.seconds.append({r: now[r] - self._before[r] for r in now})
        shares = getattr(federation.scheme, "share_bytes", {})
        self.shares.append({holder_role(i): int(b) for i, b in shares.items()})


def busy_cpu_seconds() -> float:
    """CPU-seconds the whole machine has spent not idle since boot (all processes).

    Per round, the difference says how much CPU work the round took, whoever did it;
    on a machine with C cores no schedule can finish it in less than that / C seconds.
    """
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def prime(federation: Federation) -> None:
    """Train (and seal) round 0 once on every client, results discarded, so that no
    measured round pays a client's first-call JIT compilation (only sampled clients
    train in the warm-up round), from zeros. The rounds measured come after it: a client
    signs one batch per round, rounds only moving forward, each from a new model."""
    from fedsim.aggregate.steps import RoundContext

    b = federation.backend
    # Not the round-1 model: a client trains from any one model once (shapes alone
    # decide what JIT compiles).
    ref = b.put(np.zeros_like(federation.state.params))
    context = RoundContext(0, federation.pipeline.round_params(federation.step_states))
    commitment = b.defer(b.put(b""))  # no noise: these batches are never decrypted
    groups = federation.population.groups(federation.names)
    for role, clients in groups.items():  # one party at a time: sealing takes GBs
        some = clients[: federation.cfg.federation.clients_per_round]
        b.get(b.call(role, "train", 0, ref, some, context, commitment, num_returns=2)[0])


def _on_each_actor(backend: Any, fn: Any) -> dict[str, Any]:
    """``fn(actor)`` run inside every actor of a Ray backend, by role ({} in-process)."""
    handles = getattr(backend, "handles", None)
    if not handles:
        return {}
    import ray

    refs = {role: h.__ray_call__.remote(fn) for role, h in handles.items()}
    return {role: ray.get(ref) for role, ref in refs.items()}


def _actor_pids(backend: Any) -> dict[str, int]:
    return {role: int(pid)
            for role, pid in _on_each_actor(backend, lambda self: os.getpid()).items()}


def _actor_nodes(backend: Any) -> dict[str, str]:
    """Party -> the Ray node it runs on, the driver as "coordinator"."""
    import ray

    def node(self: Any) -> str:
        return ray.get_runtime_context().get_node_id()

    return {"coordinator": node(None),
            **{role: str(n) for role, n in _on_each_actor(backend, node).items()}}


def phase_row(record: RoundRecord) -> dict[str, float]:
    """Per-phase seconds plus ``other``: round time not covered by the phases."""
    row = {p: float(record.phases.get(p, 0.0)) for p in PHASES}
    row["other"] = max(0.0, record.wall_s - sum(row.values()))
    return row
