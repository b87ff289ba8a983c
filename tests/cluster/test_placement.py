"""Placement on the session's single-node Ray (4 CPUs): spread policy, capacity, timeouts."""

from __future__ import annotations

import time

import pytest

from actors import RayBackend, check_capacity
from actors.backend import thread_env
from fedsim.config import ResourceSpec
from fedsim.errors import ProtocolError
from fedsim.protocol.backend import PartySpec

pytestmark = pytest.mark.ray


def _party_class():
    class Party:  # defined in a function so Ray ships it by value to its workers
        def ping(self) -> str:
            return "pong"

        def env(self, name: str) -> str | None:
            import os

            return os.environ.get(name)

    return Party


def _parties(clients: int = 2, holders: int = 2, *, client_cpus: float = 0.25):
    cls = _party_class()
    specs = [PartySpec(f"client:h{i}", cls, resources=ResourceSpec(num_cpus=client_cpus))
             for i in range(clients)]
    specs += [PartySpec(f"keyholder:{i}", cls, resources=ResourceSpec(num_cpus=0.1),
                        kind="keyholder") for i in range(holders)]
    return specs


def test_best_effort_spread_warns_before_starting_and_still_runs(ray_session):
    warnings: list[str] = []
    backend = RayBackend("pl-best", keyholder_spread="best_effort", on_warning=warnings.append)
    try:
        backend.start(_parties())
        assert len(warnings) == 1
        assert warnings[0].startswith("2 key holders but only 1 node(s) can host one")
        assert ray_session.get(backend.call("keyholder:1", "ping")) == "pong"
        nodes = backend.node_ids()
        assert len(set(nodes.values())) == 1 and set(nodes) == {
            "client:h0", "client:h1", "keyholder:0", "keyholder:1"}
        named = ray_session.get_actor("pl-best/keyholder-0", namespace="fedsim")
        assert ray_session.get(named.ping.remote()) == "pong"
    finally:
        backend.shutdown()
    assert backend.placement is None


def test_strict_spread_refuses_before_any_actor_starts(ray_session):
    backend = RayBackend("pl-strict", keyholder_spread="strict")
    with pytest.raises(ProtocolError, match=r"2 key holders but only 1 node\(s\).*"
                                            r"resources.keyholder_spread: best_effort"):
        backend.start(_parties())
    assert backend.handles == {}
    listed = {a["name"] for a in ray_session.util.list_named_actors(all_namespaces=True)}
    assert not any(n.startswith("pl-strict/") for n in listed)


def test_capacity_error_names_the_config_key_and_the_shortfall(ray_session):
    with pytest.raises(ProtocolError) as err:
        check_capacity(_parties(clients=3, holders=0, client_cpus=8))
    text = str(err.value)
    assert "each client asks for CPU 8 (resources.client.num_cpus)" in text
    assert "the run needs CPU 24 in all, the cluster has CPU 4" in text


def test_unplaceable_group_fails_within_the_timeout_naming_missing_resources(ray_session):
    @ray_session.remote(num_cpus=3)
    class Blocker:
        def ping(self) -> int:
            return 1

    blocker = Blocker.remote()
    ray_session.get(blocker.ping.remote())  # 3 of the 4 CPUs now taken
    backend = RayBackend("pl-late", placement_timeout_s=1.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(ProtocolError) as err:
            backend.start(_parties(clients=2, holders=0, client_cpus=1))
    finally:
        ray_session.kill(blocker)
    assert time.monotonic() - t0 < 15
    text = str(err.value)
    assert text.startswith("actors not placed within 1.5s (resources.placement_timeout_s)")
    assert "client:h0, client:h1" in text and "they need CPU 2" in text
    groups = ray_session.util.placement_group_table().values()
    assert all(g["state"] == "REMOVED" for g in groups if g["name"] == "pl-late/parties")


def test_thread_env_caps_threads_and_never_preallocates_a_shared_gpu():
    shared = thread_env(ResourceSpec(num_cpus=2.5, num_gpus=0.25))
    assert shared["OMP_NUM_THREADS"] == "2" and shared["MKL_NUM_THREADS"] == "2"
    assert "intra_op_parallelism_threads=2" in shared["XLA_FLAGS"]
    assert shared["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert shared["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"  # 0.9 x its quarter
    assert "JAX_PLATFORMS" not in shared
    cpu = thread_env(ResourceSpec(num_cpus=0.25))
    assert cpu["OMP_NUM_THREADS"] == "1" and cpu["JAX_PLATFORMS"] == "cpu"
    assert "--xla_cpu_multi_thread_eigen=false" in cpu["XLA_FLAGS"]


def test_actors_run_with_the_thread_env_of_their_resources(ray_session):
    cls = _party_class()
    backend = RayBackend("pl-env")
    try:
        backend.start([PartySpec("aggregator", cls, resources=ResourceSpec(num_cpus=2),
                                 kind="aggregator")])
        assert ray_session.get(backend.call("aggregator", "env", "OMP_NUM_THREADS")) == "2"
        assert ray_session.get(backend.call(
            "aggregator", "env", "XLA_PYTHON_CLIENT_PREALLOCATE")) == "false"
    finally:
        backend.shutdown()
