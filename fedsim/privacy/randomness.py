"""Secret randomness for DP: the OS CSPRNG inside the party that owns the draw.

`../STYLE.md` practice 2: DP noise, DP-SGD batch sampling and noise, every noise share
and the client sampling the accounting relies on are secret randomness. They are drawn
here, from ``os.urandom``, in the process of the party that adds them; nothing about a
draw is derived from the run seed, recorded or sent. A run's `NoiseSource` hands each
party a source per draw:

* `SecretRandom` (the default): uniforms are 53 bits of ``os.urandom`` each; JAX keys
  (DP-SGD's noise inside the jitted step) are 64 fresh bits of ``os.urandom`` per key,
  expanded by JAX's Threefry-2x32 (a counter-mode block cipher, Salmon et al. 2011).
  The one draw that needs a distribution numpy has and a uniform cannot cheaply give
  (the negative-binomial shares of distributed Laplace noise) uses numpy's PCG64DXSM
  keyed with 256 fresh bits per draw, whose outputs never leave the party.
* `SeededRandom` (``privacy.insecure_seeded_noise: true``): the same draws from the run
  seed, so tests can compare he with plaintext bit for bit under DP. Anyone holding the
  config regenerates the noise: a run made so has no DP guarantee, and says so in its
  manifest and on its progress line.

Both offer ``random(size)`` (float64 in [0, 1)), ``open_unit(size)`` (in (0, 1]),
``jax_key()`` and ``generator()``; samplers take either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, final

import numpy as np

from fedsim.seeding import client_key, purpose_tag, stream

__all__ = ["NoiseSource", "SecretRandom", "SeededRandom"]

_MANTISSA = 2.0 ** -53


@final
class SecretRandom:
    """Draws from the operating system's CSPRNG (``os.urandom``); nothing is stored."""

    def _bits53(self, size: int) -> np.ndarray:
        """``size`` integers of 53 random bits, as float64 (exact)."""
        words = np.frombuffer(os.urandom(8 * int(size)), np.uint64)
        return (words >> np.uint64(11)).astype(np.float64)

    def random(self, size: int) -> np.ndarray:
        """``size`` uniforms in [0, 1) with 53 random bits each."""
        return self._bits53(size) * _MANTISSA

    def open_unit(self, size: int) -> np.ndarray:
        """``size`` uniforms in (0, 1] (safe to take the log of)."""
        return (self._bits53(size) + 1.0) * _MANTISSA

    def jax_key(self) -> Any:
        """A raw (uint32[2]) Threefry key of 64 fresh bits."""
        import jax.numpy as jnp

        return jnp.asarray(np.frombuffer(os.urandom(8), np.uint32))

    def generator(self) -> np.random.Generator:
        entropy = int.from_bytes(os.urandom(32), "little")
        return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence(entropy)))


@final
class SeededRandom:
    """INSECURE: the same draws derived from the run seed (reproducible, regenerable)."""

    def __init__(self, seed: int, purpose: str, ids: tuple[int, ...]) -> None:
        self._seed, self._purpose, self._ids = seed, purpose, ids
        self._rng = stream(seed, purpose, *ids)
        self._keys = 0
        self._generators = 0

    def random(self, size: int) -> np.ndarray:
        return self._rng.random(int(size))

    def open_unit(self, size: int) -> np.ndarray:
        return 1.0 - self._rng.random(int(size))

    def jax_key(self) -> Any:
        self._keys += 1
        return client_key(self._seed, purpose_tag(self._purpose), *self._ids, self._keys)

    def generator(self) -> np.random.Generator:
        self._generators += 1
        return stream(self._seed, self._purpose + "-generator", *self._ids, self._generators)


@dataclass(frozen=True)
class NoiseSource:
    """Where a run's secret randomness comes from: the OS CSPRNG, or (insecure) the seed.

    ``draw(purpose, *ids)`` gives a fresh source for one draw; with ``insecure_seed``
    set, the source is `SeededRandom` of ``(seed, purpose, ids)``.
    """

    insecure_seed: int | None = None

    @property
    def secret(self) -> bool:
        return self.insecure_seed is None

    def draw(self, purpose: str, *ids: int) -> SecretRandom | SeededRandom:
        if self.insecure_seed is None:
            return SecretRandom()
        return SeededRandom(self.insecure_seed, purpose, tuple(int(i) for i in ids))

    @classmethod
    def for_run(cls, cfg: Any) -> NoiseSource:
        """The run's source: secret unless ``privacy.insecure_seeded_noise`` is set."""
        return cls(cfg.seed if cfg.privacy.insecure_seeded_noise else None)
