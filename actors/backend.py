"""`RayBackend`: each fedsim party becomes a named, long-lived Ray actor.

- Names read naturally in the dashboard: namespace ``fedsim``, ``<run>/client-<hospital>``,
  ``<run>/aggregator``, ``<run>/keyholder-<i>``.
- Threads match the actor's CPUs: OMP_NUM_THREADS and XLA's CPU thread pool, or a
  few actors on two cores thrash each other. JAX never preallocates a shared GPU.
- Key holders use the SPREAD strategy so they land on distinct nodes when there are
  enough of them; clients are packed (Ray's default).
- A request the cluster cannot satisfy fails before the run with the missing
  resources named, and actors that cannot be placed in time fail the run, never hang.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayTaskError

from fedsim.backend import PartySpec
from fedsim.config import ResourceSpec
from fedsim.errors import FedSimError, ProtocolError

NAMESPACE = "fedsim"


def actor_name(run_id: str, role: str) -> str:
    """Dashboard name of a party: ``client:h1`` -> ``<run>/client-h1``."""
    return f"{run_id}/{role.replace(':', '-')}"


def connect(address: str | None = None, *, num_cpus: int | None = None,
            include_dashboard: bool | None = None) -> bool:
    """Join a cluster at ``address`` (or RAY_ADDRESS), or start a local Ray.

    Returns True when this call started Ray (so the caller should shut it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": True}
    if address is None:
        kwargs["num_cpus"] = num_cpus
        if include_dashboard is not None:
            kwargs["include_dashboard"] = include_dashboard
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise ProtocolError(f"cannot connect to Ray at {address}: {err}") from None
    return True


def thread_env(res: ResourceSpec) -> dict[str, str]:
    """Environment that caps native thread pools to the actor's CPUs."""
    threads = str(max(1, math.floor(res.num_cpus)))
    env = {
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen={'true' if int(threads) > 1 else 'false'} "
                     f"intra_op_parallelism_threads={threads}",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    if res.num_gpus > 0:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(res.num_gpus, 1.0) * 0.9:.3f}"
    else:
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _needed(parties: Sequence[PartySpec]) -> dict[str, float]:
    need = {"CPU": 0.0, "GPU": 0.0, "memory": 0.0}
    for p in parties:
        need["CPU"] += p.resources.num_cpus
        need["GPU"] += p.resources.num_gpus
        need["memory"] += (p.resources.memory_mb or 0) * 2**20
    return need


def check_capacity(parties: Sequence[PartySpec]) -> None:
    """Refuse, before any actor starts, a request the cluster can never satisfy."""
    have = ray.cluster_resources()
    need = _needed(parties)
    missing = []
    for key, amount in need.items():
        if amount > have.get(key, 0.0) + 1e-9:
            unit = " bytes" if key == "memory" else ""
            missing.append(f"{key} {amount:g}{unit} needed, cluster has {have.get(key, 0.0):g}")
    per_actor_gpu = max((p.resources.num_gpus for p in parties), default=0.0)
    if per_actor_gpu > 0 and have.get("GPU", 0.0) == 0:
        missing.append("GPU requested but the cluster has no GPUs")
    if missing:
        raise ProtocolError("cannot place the run's actors: " + "; ".join(dict.fromkeys(missing)))


class RayBackend:
    """Runs parties as Ray actors; implements `fedsim.backend.Backend`."""

    def __init__(self, run_id: str, *, placement_timeout_s: float = 60.0) -> None:
        if not ray.is_initialized():
            raise ProtocolError("RayBackend needs Ray initialised (see actors.connect)")
        self.run_id = run_id
        self.timeout = placement_timeout_s
        self.handles: dict[str, Any] = {}
        self.names: dict[str, str] = {}

    def start(self, parties: Sequence[PartySpec]) -> None:
        check_capacity(parties)
        for spec in parties:
            res = spec.resources
            options: dict[str, Any] = {
                "name": actor_name(self.run_id, spec.role),
                "namespace": NAMESPACE,
                "num_cpus": res.num_cpus,
                "num_gpus": res.num_gpus,
                "runtime_env": {"env_vars": thread_env(res)},
                "max_restarts": 0,
            }
            if res.memory_mb:
                options["memory"] = res.memory_mb * 2**20
            if spec.kind == "keyholder":
                options["scheduling_strategy"] = "SPREAD"
            self.handles[spec.role] = ray.remote(spec.cls).options(**options).remote(
                *spec.args, **spec.kwargs)
            self.names[spec.role] = options["name"]
        self._wait_ready(parties)

    def _wait_ready(self, parties: Sequence[PartySpec]) -> None:
        """Wait for every actor's constructor; fail fast if some cannot be placed.

        After ``placement_timeout_s`` the actors still pending are either unplaced
        (their resources were never taken from the cluster: fail, naming them) or
        placed and still initialising (JAX start-up on a loaded machine: keep waiting,
        up to ten times the timeout).
        """
        ready = {role: h.__ray_ready__.remote() for role, h in self.handles.items()}
        need = _needed(parties)
        deadline = self.timeout * 10
        waited = 0.0
        pending = list(ready.values())
        while pending:
            step = self.timeout if waited == 0 else min(self.timeout, 5.0)
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=step)
            try:
                ray.get(done)
            except RayTaskError as err:
                raise _unwrap(err) from None
            waited += step
            if not pending:
                return
            late = [r for r, ref in ready.items() if ref in pending]
            total, free = ray.cluster_resources(), ray.available_resources()
            placed = total.get("CPU", 0.0) - free.get("CPU", 0.0) >= need["CPU"] - 1e-6 and \
                total.get("GPU", 0.0) - free.get("GPU", 0.0) >= need["GPU"] - 1e-6
            if not placed or waited >= deadline:
                what = "not placed" if not placed else "not initialised"
                raise ProtocolError(
                    f"actors {what} within {waited:g}s: {', '.join(late)} "
                    f"(needed CPU {need['CPU']:g} GPU {need['GPU']:g}; "
                    f"free CPU {free.get('CPU', 0.0):g} GPU {free.get('GPU', 0.0):g})"
                )

    def put(self, value: Any) -> Any:
        return ray.put(value)

    def call(self, role: str, method: str, *args: Any, num_returns: int = 1,
             **kwargs: Any) -> Any:
        bound = getattr(self.handles[role], method)
        if num_returns != 1:
            bound = bound.options(num_returns=num_returns)
        return bound.remote(*args, **kwargs)

    def wait(self, handles: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        return ray.wait(list(handles), num_returns=1)

    def get(self, handle: Any) -> Any:
        try:
            return ray.get(handle)
        except RayTaskError as err:
            raise _unwrap(err) from None

    def stop(self, role: str) -> None:
        handle = self.handles.pop(role, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)

    def shutdown(self) -> None:
        for role in list(self.handles):
            self.stop(role)


def _unwrap(err: RayTaskError) -> BaseException:
    """The fedsim error a remote call raised, so the CLI can print it as one line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, FedSimError):
        return cause
    return err
