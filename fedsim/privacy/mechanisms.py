"""Additive noise mechanisms for the client-level aggregate: Gaussian and Laplace.

The aggregate is the sum of clipped client updates. Its sensitivity to adding or
removing one client is the clip bound ``C`` (L2 for Gaussian, L1 for Laplace), so
noise with scale ``C * z`` (``z`` the noise multiplier) gives the guarantee that the
accountant (``fedsim.privacy.accountant``) computes for multiplier ``z``.

Two placements (DESIGN.md, Differential privacy):

* ``aggregator``: :func:`central_noise` draws the whole noise once and the aggregator
  adds it to the encrypted sum (the seed paper's eq. 4 and 7).
* ``distributed``: every client adds :func:`noise_share` to its own update before
  encrypting; no single party knows the total noise. The shares are calibrated for
  ``min_clients`` contributors: the sum of ``min_clients`` independent shares has
  exactly the target distribution. More contributors add more noise than needed (still
  private); fewer would add too little, so such a round must be refused before
  decryption: call :func:`check_survivors`. (Dropped clients' shares are lost, which is
  why the calibration is for the survivors, not the sampled clients.)

Every function takes an explicit ``numpy.random.Generator``; nothing reads global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedsim.errors import PrivacyError
from fedsim.privacy.clipping import clip_l1, clip_l2

__all__ = [
    "MECHANISMS",
    "NoiseSpec",
    "central_noise",
    "check_survivors",
    "clip_update",
    "noise_share",
]

Mechanism = Literal["gaussian", "laplace"]
MECHANISMS: tuple[str, ...] = ("gaussian", "laplace")


def check_mechanism(mechanism: str) -> None:
    """Raise PrivacyError unless ``mechanism`` is one of :data:`MECHANISMS`."""
    if mechanism not in MECHANISMS:
        raise PrivacyError(
            f"mechanism: must be one of {', '.join(repr(m) for m in MECHANISMS)}, got {mechanism!r}"
        )


@dataclass(frozen=True)
class NoiseSpec:
    """What noise protects a sum of clipped updates; validated when built.

    Attributes:
        mechanism: ``"gaussian"`` (L2 clipping) or ``"laplace"`` (L1 clipping).
        clip: the clip bound ``C`` = the sensitivity of the sum, > 0.
        noise_multiplier: ``z`` > 0; the noise scale is ``C * z``.
    """

    mechanism: Mechanism
    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        check_mechanism(self.mechanism)
        if self.clip is None or not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError(
                f"clip: noise without clipping has no stated guarantee; clip must be a "
                f"finite number > 0, got {self.clip}"
            )
        if self.noise_multiplier is None or not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise PrivacyError(
                f"noise_multiplier: must be a finite number > 0 when DP is enabled, "
                f"got {self.noise_multiplier}"
            )

    @property
    def scale(self) -> float:
        """The distribution's scale: Gaussian sigma, or Laplace ``b``; both ``clip * z``."""
        return self.clip * self.noise_multiplier

    @property
    def stddev(self) -> float:
        """Standard deviation per coordinate: ``sigma`` (Gaussian) or ``sqrt(2) * b`` (Laplace)."""
        return self.scale if self.mechanism == "gaussian" else math.sqrt(2.0) * self.scale

    @property
    def norm(self) -> Literal["l2", "l1"]:
        """The norm the clip bound applies to: L2 for Gaussian, L1 for Laplace."""
        return "l2" if self.mechanism == "gaussian" else "l1"


def clip_update(update: np.ndarray, spec: NoiseSpec) -> tuple[np.ndarray, float]:
    """Clip ``update`` in the norm matching ``spec.mechanism``; see ``clipping``."""
    clip = clip_l2 if spec.norm == "l2" else clip_l1
    return clip(update, spec.clip)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise PrivacyError(f"size: must be an integer >= 0, got {size!r}")
    return int(size)


def central_noise(rng: np.random.Generator, size: int, spec: NoiseSpec) -> np.ndarray:
    """The whole noise vector for the sum (aggregator placement), float64 of shape (size,).

    Gaussian: i.i.d. ``N(0, (C z)^2)``; Laplace: i.i.d. ``Laplace(0, b = C z)``.
    """
    size = _check_size(size)
    if spec.mechanism == "gaussian":
        return rng.normal(0.0, spec.scale, size)
    return rng.laplace(0.0, spec.scale, size)


def noise_share(
    rng: np.random.Generator, size: int, spec: NoiseSpec, num_shares: int
) -> np.ndarray:
    """One client's share of the noise (distributed placement), float64 of shape (size,).

    The sum of ``num_shares`` independent shares has exactly the distribution of
    :func:`central_noise`:

    * Gaussian: each share is ``N(0, sigma^2 / m)``.
    * Laplace: each share is ``b * (G1 - G2)`` with ``G1, G2 ~ Gamma(1/m, 1)``; the sum
      of ``m`` such Gammas is ``Gamma(1, 1) = Exp(1)`` and the difference of two
      independent ``Exp(1)`` is ``Laplace(0, 1)`` (the infinite divisibility of the
      Laplace law, as used by Goryczka and Xiong 2017 for distributed Laplace noise).

    ``num_shares`` must be the minimum number of surviving contributors
    (``min_clients``); see the module docstring and :func:`check_survivors`.
    """
    size = _check_size(size)
    if isinstance(num_shares, bool) or not isinstance(num_shares, (int, np.integer)):
        raise PrivacyError(f"num_shares: must be an integer >= 1, got {num_shares!r}")
    if num_shares < 1:
        raise PrivacyError(f"num_shares: must be an integer >= 1, got {num_shares}")
    m = int(num_shares)
    if spec.mechanism == "gaussian":
        return rng.normal(0.0, spec.scale / math.sqrt(m), size)
    shape = 1.0 / m
    return spec.scale * (rng.gamma(shape, 1.0, size) - rng.gamma(shape, 1.0, size))


def check_survivors(contributors: int, min_clients: int) -> None:
    """Refuse a distributed-noise round with fewer contributors than the calibration.

    With ``contributors < min_clients`` the decrypted sum carries less noise than the
    accountant assumed, so it must not be decrypted.

    Raises:
        PrivacyError: ``contributors < min_clients`` or ``min_clients < 1``.
    """
    if min_clients < 1:
        raise PrivacyError(f"min_clients: must be >= 1, got {min_clients}")
    if contributors < min_clients:
        raise PrivacyError(
            f"only {contributors} clients contributed noise shares but the noise is "
            f"calibrated for at least min_clients={min_clients}; refusing to release the "
            f"round"
        )
