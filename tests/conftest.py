"""Test set-up: JAX on CPU with a strict numpy API; Ray started once, only if needed."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402

from fedsim.config import from_dict  # noqa: E402


def tiny_config(**sections) -> "RunConfig":  # noqa: F821
    """A config small enough for a test: 3 hospitals x ~300 patients, a width-8 MLP."""
    base = {
        "name": "tiny",
        "seed": 0,
        "data": {"synth": {"num_hospitals": 3, "patients_per_hospital": 300,
                           "vocab_size": 500, "mean_codes": 6.0}},
        "model": {"depth": 2, "width": 8},
        "train": {"lr": 0.01, "batch_size": 32, "local_steps": 5},
        "federation": {"rounds": 3, "clients_per_round": 3, "min_clients": 2},
        "crypto": {"profile": "test", "allow_insecure": True, "key_holders": 3},
        "resources": {"client": {"num_cpus": 0.25}, "aggregator": {"num_cpus": 0.25},
                      "keyholder": {"num_cpus": 0.1}},
    }
    for name, values in sections.items():
        merged = dict(base.get(name, {}))
        merged.update(values)
        base[name] = merged
    return from_dict(base)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (4 logical CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, namespace="fedsim",
                 log_to_driver=False)
    yield ray
    ray.shutdown()
