"""Public randomness: every stream is derived from the run seed and a purpose.

For what may be public only: synthetic data, initialisation, batch order outside DP,
client sampling outside DP. Results never depend on Ray's scheduling order because
each client, round and purpose has its own generator, built from a
`numpy.random.SeedSequence` of ``(seed, purpose tag, *ids)``. Secret randomness (DP
noise and sampling, keys, masks, flooding) never comes from here: see
`fedsim.privacy.randomness`.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np


def purpose_tag(purpose: str) -> int:
    return zlib.crc32(purpose.encode())


def stream(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    """A numpy generator for ``purpose`` (e.g. "sampling", "batches") and integer ids."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose_tag(purpose), *ids]))


def client_key(seed: int, *ids: int) -> Any:
    """A JAX PRNG key derived from the run seed and integer ids (client, round, ...)."""
    import jax  # here, so parties without JAX (aggregator, key holders) can use `stream`

    key = jax.random.PRNGKey(seed)
    for i in ids:
        key = jax.random.fold_in(key, i)
    return key
