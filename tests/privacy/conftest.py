"""Privacy tests run on CPU with strict JAX shape promotion and few XLA threads."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_rank_promotion("raise"):
        yield
