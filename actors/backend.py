"""`RayBackend`: each fedsim party becomes a named, long-lived Ray actor.

- Names read naturally in the dashboard: namespace ``fedsim``, ``<run>/client-<hospital>``,
  ``<run>/aggregator``, ``<run>/keyholder-<i>``.
- Threads match the actor's CPUs: OMP_NUM_THREADS and XLA's CPU thread pool, or a
  few actors on two cores thrash each other. JAX never preallocates a shared GPU.
- Placement (`actors.placement`): clients and aggregator in one PACK placement
  group, key holders in a STRICT_SPREAD one (one per node). A request the cluster
  cannot satisfy fails before the run with the missing resources named, and groups
  that cannot be placed in time fail the run, never hang.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.placement import Placement, plan
from fedsim.config import ResourceSpec
from fedsim.errors import FedSimError, PartyLost, ProtocolError
from fedsim.protocol.backend import PartySpec, check_method

try:
    from ray.exceptions import AuthenticationError
except ImportError:  # Ray before token authentication
    AuthenticationError = ConnectionError  # type: ignore[misc,assignment]

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
    else:
        _use_token_if_available()
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, AuthenticationError) as err:
        hint = ""
        if "auth" in str(err).lower():
            hint = (" (the cluster uses token authentication: copy its token to "
                    "~/.ray/auth_token or set RAY_AUTH_TOKEN, with RAY_AUTH_MODE=token)")
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ProtocolError(f"cannot connect to Ray at {address}: {first}{hint}") from None
    return True


def _use_token_if_available() -> None:
    """Send the local token (~/.ray/auth_token, RAY_AUTH_TOKEN) when joining a cluster.

    Ray 2.5x+ starts clusters with token authentication on, but a driver that joins
    one only sends its token when RAY_AUTH_MODE=token; without it the connection is
    refused. An explicit RAY_AUTH_MODE is respected.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # older Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


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


class RayBackend:
    """Runs parties as Ray actors; implements `fedsim.protocol.backend.Backend`."""

    def __init__(self, run_id: str, *, placement_timeout_s: float = 60.0,
                 keyholder_spread: str = "best_effort",
                 on_warning: Callable[[str], None] | None = None) -> None:
        if not ray.is_initialized():
            raise ProtocolError("RayBackend needs Ray initialised (see actors.connect)")
        self.run_id = run_id
        self.timeout = placement_timeout_s
        self.spread = keyholder_spread
        self.warn = on_warning or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=3))
        self.handles: dict[str, Any] = {}
        self.names: dict[str, str] = {}
        self.placement: Placement | None = None

    def start(self, parties: Sequence[PartySpec]) -> None:
        self.placement = plan(self.run_id, parties, spread=self.spread,
                              timeout_s=self.timeout, warn=self.warn)
        for spec in parties:
            res = spec.resources
            group, index = self.placement.slots[spec.role]
            options: dict[str, Any] = {
                "name": actor_name(self.run_id, spec.role),
                "namespace": NAMESPACE,
                "num_cpus": res.num_cpus,
                "num_gpus": res.num_gpus,
                "runtime_env": {"env_vars": thread_env(res)},
                "max_restarts": 0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=index),
            }
            if res.memory_mb:
                options["memory"] = res.memory_mb * 2**20
            self.handles[spec.role] = ray.remote(spec.cls).options(**options).remote(
                *spec.args, **spec.kwargs)
            self.names[spec.role] = options["name"]
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Wait for every actor's constructor, at most ten placement timeouts.

        Resources are already reserved by the placement groups, so a pending actor
        is initialising (JAX start-up on a loaded machine), not waiting for a node.
        """
        ready = {h.__ray_ready__.remote(): role for role, h in self.handles.items()}
        done, pending = ray.wait(list(ready), num_returns=len(ready),
                                 timeout=self.timeout * 10)
        try:
            ray.get(done)
        except RayTaskError as err:
            raise _unwrap(err) from None
        if pending:
            late = ", ".join(ready[ref] for ref in pending)
            raise ProtocolError(f"actors placed but not initialised within "
                                f"{self.timeout * 10:g}s: {late}")

    def node_ids(self) -> dict[str, str]:
        """The Ray node id each party runs on (for placement checks and reports)."""
        refs = {role: h.__ray_call__.remote(
            lambda _self: ray.get_runtime_context().get_node_id())
            for role, h in self.handles.items()}
        return {role: ray.get(ref) for role, ref in refs.items()}

    def put(self, value: Any) -> Any:
        return ray.put(value)

    def call(self, role: str, method: str, *args: Any, num_returns: int = 1,
             **kwargs: Any) -> Any:
        check_method(role, method)
        if role not in self.handles:
            raise PartyLost(role, f"{role} is gone (stopped)")
        bound = getattr(self.handles[role], method)
        if num_returns != 1:
            bound = bound.options(num_returns=num_returns)
        return bound.remote(*args, **kwargs)

    def wait(self, handles: Sequence[Any], timeout: float | None = None
             ) -> tuple[list[Any], list[Any]]:
        return ray.wait(list(handles), num_returns=1, timeout=timeout)

    def get(self, handle: Any) -> Any:
        try:
            return ray.get(handle)
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, (RayActorError, ObjectLostError, NodeDiedError)):
                # a party's call failed because another party (or its data) is gone
                raise PartyLost("a party", f"a party is gone ({type(cause).__name__}, seen "
                                "by another party's call)") from None
            raise _unwrap(err) from None
        except RayActorError as err:  # the actor's process is gone
            role = self._role_of(err)
            raise PartyLost(role, f"{role} is gone ({type(err).__name__})") from None
        except (ObjectLostError, NodeDiedError) as err:  # a party's node or data is gone
            raise PartyLost("a party", f"a party's node or data is gone "
                            f"({type(err).__name__})") from None

    def _role_of(self, err: RayActorError) -> str:
        for role, handle in self.handles.items():
            if handle._actor_id.hex() == err.actor_id:
                return role
        return "a party"

    def defer(self, handle: Any) -> RayDeferred:
        return RayDeferred(handle)

    def stop(self, role: str) -> None:
        handle = self.handles.pop(role, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)

    def shutdown(self) -> None:
        """End every party, then free the placement groups (`_end_actors`).

        Each actor is asked to exit by itself (as `ray.actor.exit_actor` does: its worker
        leaves the raylet, then exits) and waited for briefly; one still there after that
        (busy in a call, stopped) is killed. The groups go only then: removing a group
        while an actor in it is alive (a killed one is reported dead before its worker
        has gone) makes the raylet SIGTERM that worker, and Ray's SIGTERM handler in it
        raises ``SystemExit: 1`` wherever it is, printing ``Exception ignored ...``.
        """
        handles = list(self.handles.values())
        self.handles.clear()
        _end_actors(handles)
        if self.placement is not None:
            self.placement.remove()
            self.placement = None


class RayDeferred:
    """An object ref a party resolves itself, later (`fedsim.protocol.backend.Deferred`)."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def get(self) -> Any:
        try:
            return ray.get(self.ref)
        except RayTaskError as err:
            raise _unwrap(err) from None


def _unwrap(err: RayTaskError) -> BaseException:
    """The fedsim error a remote call raised, so the CLI can print it as one line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, FedSimError):
        return cause
    return err


# How long `RayBackend.shutdown` waits for actors to exit by themselves (idle ones take a
# tenth of a second), and after killing the rest for their workers to be gone.
_EXIT_TIMEOUT_S = 2.0
_KILL_GRACE_S = 0.5


def _end_actors(handles: Sequence[Any], *, timeout_s: float = _EXIT_TIMEOUT_S) -> None:
    """Let each actor exit by itself (`_exit_actor`, run after the calls already queued);
    kill the ones not gone within ``timeout_s``.

    The exit call's ref resolves (to an actor-died error) once the actor is dead, which
    for an exit of its own is after its worker has left the raylet. A killed actor is
    reported dead before its worker has gone, so killed ones get a short grace.
    """
    import time

    if not handles:
        return
    refs: dict[Any, Any] = {}
    for handle in handles:
        try:
            refs[handle.__ray_call__.remote(_exit_actor)] = handle
        except Exception:  # the cluster is gone: nothing left to end
            return
    try:
        _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    except Exception:  # the cluster went meanwhile
        return
    for ref in pending:
        try:
            ray.kill(refs[ref], no_restart=True)
        except Exception:  # died meanwhile
            pass
    if pending:
        time.sleep(_KILL_GRACE_S)


def _exit_actor(_party: Any) -> None:
    """Run in an actor: exit the way `ray.actor.exit_actor` does (the worker leaves its
    raylet in good order), then skip the interpreter's clean-up, which takes seconds of
    CPU for a party holding JAX and OpenFHE state and would outlive the run."""
    import atexit
    import sys

    def now() -> None:  # registered last, so the first exit handler to run
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)

    atexit.register(now)
    ray.actor.exit_actor()
