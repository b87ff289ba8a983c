"""Test set-up: JAX on CPU and strict (rank promotion raises, as in equinox's tests;
warnings raised from fedsim code are errors, see pyproject.toml); Ray started once,
only if needed."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Every Ray a test starts is its own embedded one: never a cluster another test (in this
# process or in a parallel pytest worker) started with `ray start` on this machine.
os.environ.setdefault("RAY_ADDRESS", "local")
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")  # also in subprocesses

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def quick_plaintext():
    """configs/quick.yaml in plaintext, 20 rounds in process, scored every round: the
    reference several slow tests compare with (built once)."""
    from pathlib import Path

    from builders import federation, scored_rounds

    from fedsim import load_config

    quick = Path(__file__).resolve().parents[1] / "configs/quick.yaml"
    fed = federation(load_config(quick, ["federation.mode=plaintext"]), run_id="plain")
    return fed, scored_rounds(fed, 20)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (4 logical CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, namespace="fedsim",
                 log_to_driver=False)
    yield ray
    ray.shutdown()
