"""Integer noise on a fixed-point lattice: discrete Gaussian and discrete Laplace.

Floating-point Laplace and Gaussian samples leak the value they are added to through
the gaps between representable doubles (Mironov, CCS 2012). fedsim's client-level noise
is therefore integer-valued, on a lattice ``gamma * Z`` with ``gamma`` a power of two:
contributions are divided by the public denominator and rounded to the lattice before
noise is added (`Mechanism.clip_update`), so every sum is an exact multiple of
``gamma`` (float64 adds such multiples exactly). In he mode the decrypted sum also
carries CKKS's approximation error, far above ``gamma``; that error is out of scope.

* `discrete_laplace(rng, t, size)`: ``P(y) ~ exp(-|y| / t)``, as the difference of two
  geometric variables ``floor(-t log U)`` (each exactly geometric with ratio
  ``exp(-1/t)`` for an exact uniform ``U``).
* `discrete_gaussian(rng, sigma, size)`: ``P(y) ~ exp(-y^2 / (2 sigma^2))``, by
  Canonne, Kamath and Steinke (NeurIPS 2020), Algorithm 3: propose ``Y`` from the
  discrete Laplace of ``t = floor(sigma) + 1`` and accept with probability
  ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``; vectorised, rejected values redrawn.

Both use 53-bit uniforms and float64 ``log``/``exp``, not exact rational arithmetic:
each probability is off by a relative ~2^-52, so a drawn vector's distribution is
within total variation ~``size * 2^-50`` of the exact one. The output is an integer, so
this approximation does not expose the noiseless value as floating-point noise does.

`lattice` picks ``gamma`` for a clip bound so that rounding moves a vector by at most
``slack * clip`` in the mechanism's norm (`ROUNDING_SLACK`); the mechanism clips to
``clip - rounding`` first, so the rounded contribution stays within ``clip``.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.errors import PrivacyError

__all__ = ["ROUNDING_SLACK", "discrete_gaussian", "discrete_laplace", "lattice"]

ROUNDING_SLACK = 2.0 ** -10  # rounding costs at most 1/1024 of the clip bound


def lattice(clip: float, size: int, norm: str) -> tuple[float, float]:
    """``(gamma, rounding)``: the power-of-two lattice step for ``size`` values clipped to
    ``clip`` in ``norm``, and the largest norm rounding to it can add (half a step per
    value: ``gamma sqrt(size) / 2`` in L2, ``gamma size / 2`` in L1)."""
    spread = math.sqrt(max(size, 1)) if norm == "l2" else float(max(size, 1))
    gamma = 2.0 ** math.floor(math.log2(2.0 * ROUNDING_SLACK * clip / spread))
    return gamma, gamma * spread / 2.0


def round_to(values: np.ndarray, gamma: float) -> np.ndarray:
    """``values`` rounded to the nearest multiple of ``gamma`` (float64)."""
    return np.rint(np.asarray(values, np.float64) / gamma) * gamma


def _open_unit(rng, size: int) -> np.ndarray:
    """Uniforms in (0, 1] from a `fedsim.privacy.randomness` source or a numpy Generator."""
    if hasattr(rng, "open_unit"):
        return rng.open_unit(size)
    return 1.0 - rng.random(size)


def _geometric(rng, t: float, size: int) -> np.ndarray:
    # P(floor(-t log U) >= k) = P(U <= exp(-k/t)) = exp(-k/t): geometric, ratio e^{-1/t}.
    return np.floor(-t * np.log(_open_unit(rng, size)))


def discrete_laplace(rng, t: float, size: int) -> np.ndarray:
    """``size`` draws of the discrete Laplace with ``P(y) ~ exp(-|y|/t)``, as int64."""
    if not (math.isfinite(t) and t > 0):
        raise PrivacyError(f"discrete Laplace scale must be a finite number > 0, got {t}")
    return (_geometric(rng, t, size) - _geometric(rng, t, size)).astype(np.int64)


def discrete_gaussian(rng, sigma: float, size: int) -> np.ndarray:
    """``size`` draws of the discrete Gaussian ``N_Z(0, sigma^2)`` (CKS 2020), as int64.

    Expected proposals per value are below 1.5 for ``sigma >= 1`` (CKS 2020, Prop. 5).
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise PrivacyError(f"discrete Gaussian sigma must be a finite number > 0, got {sigma}")
    if sigma >= 2.0 ** 50:
        raise PrivacyError(f"discrete Gaussian sigma {sigma:.3g} is above 2^50 lattice steps; "
                           "lattice values would lose float64 exactness")
    t = math.floor(sigma) + 1.0
    out = np.empty(int(size), np.int64)
    todo = np.arange(int(size))
    while todo.size:
        y = _geometric(rng, t, todo.size) - _geometric(rng, t, todo.size)
        accept = rng.random(todo.size) < np.exp(
            -np.square(np.abs(y) - sigma * sigma / t) / (2.0 * sigma * sigma))
        out[todo[accept]] = y[accept].astype(np.int64)
        todo = todo[~accept]
    return out


def sum_divergence(sigma_share: float, shares: int) -> float:
    """How far the sum of ``shares`` independent ``N_Z(0, sigma_share^2)`` is from one
    discrete Gaussian of the summed variance: Kairouz, Liu and Steinke (ICML 2021),
    Thm. 1, ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))``: the sum's
    guarantee is the single discrete Gaussian's up to ``tau``. fedsim's shares have at
    least 4 lattice steps per sigma, so ``tau < 1e-60`` (0.0 in float64 at the update
    vector's sizes, tested): negligible against any delta, and not added to it."""
    s2 = sigma_share * sigma_share
    return 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * s2 * k / (k + 1)) for k in range(1, shares))
