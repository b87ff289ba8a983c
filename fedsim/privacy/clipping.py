"""Norm clipping of flat update vectors: the sensitivity bound every DP guarantee rests on.

A client's contribution to the aggregate is clipped to norm at most ``bound`` so that
adding or removing one client moves the sum by at most ``bound`` (L2 for the Gaussian
mechanism, L1 for the Laplace mechanism). The seed paper adds noise without clipping,
which bounds nothing; fedsim clips first (Abadi et al. 2016; McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models").

Contract of both functions:

* ``update`` is a finite float array (flattened parameter delta); it is never modified.
* The result has the requested norm at most ``bound`` *exactly* in float64: the vector is
  scaled by ``bound / norm`` and, if rounding leaves it a hair over, shrunk by a few ulps.
* A vector already within the bound (including the zero vector) comes back unchanged
  (as a copy); there is no division by a zero norm.
* Huge entries do not overflow the norm computation: the vector is normalised by its
  largest magnitude before squaring.
"""

from __future__ import annotations

import numpy as np

from fedsim.errors import PrivacyError

__all__ = ["clip_l1", "clip_l2", "l1_norm", "l2_norm"]

# Shrink factor applied when a scaled vector lands a rounding error above the bound.
_SHRINK = 1.0 - 4.0 * np.finfo(np.float64).eps


def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not (np.isfinite(bound) and bound > 0.0):
        raise PrivacyError(f"clip bound must be a finite number > 0, got {bound}")
    return bound


def _as_finite_vector(update: np.ndarray) -> np.ndarray:
    x = np.asarray(update, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise PrivacyError("update contains NaN or infinite values; it cannot be clipped")
    return x


def _unit_norm(unit: np.ndarray, order: int) -> float:
    return float(np.sum(np.abs(unit))) if order == 1 else float(np.linalg.norm(unit.ravel()))


def _norm(x: np.ndarray, order: int) -> float:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return 0.0
    # Normalise by the largest magnitude so squaring cannot overflow (or underflow).
    return peak * _unit_norm(x / peak, order)


def l2_norm(update: np.ndarray) -> float:
    """Euclidean norm of ``update``, computed without overflow for huge entries."""
    return _norm(_as_finite_vector(update), 2)


def l1_norm(update: np.ndarray) -> float:
    """L1 norm of ``update``, computed without overflow for huge entries."""
    return _norm(_as_finite_vector(update), 1)


def _clip(update: np.ndarray, bound: float, order: int) -> tuple[np.ndarray, float]:
    bound = _check_bound(bound)
    x = _as_finite_vector(update)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x.copy(), 0.0
    unit = x / peak
    unit_norm = _unit_norm(unit, order)
    norm = peak * unit_norm  # may be inf for astronomically large vectors; that is fine
    if norm <= bound:
        return x.copy(), norm
    clipped = unit * (bound / unit_norm)
    # Rounding may put it a hair over, by either way of computing the norm (direct, or
    # rescaled as l2_norm/l1_norm do): shrink by a few ulps until both agree it is within.
    while max(_unit_norm(clipped, order), _norm(clipped, order)) > bound:
        clipped *= _SHRINK
    return clipped, norm


def clip_l2(update: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """Scale ``update`` to L2 norm at most ``bound``; return ``(clipped, original_norm)``.

    Use with the Gaussian mechanism: the L2 sensitivity of a sum of clipped updates to
    adding or removing one client is ``bound``.

    Raises:
        PrivacyError: ``bound`` is not a finite number > 0, or ``update`` is not finite.
    """
    return _clip(update, bound, 2)


def clip_l1(update: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """Scale ``update`` to L1 norm at most ``bound``; return ``(clipped, original_norm)``.

    Use with the Laplace mechanism, whose calibration is to the L1 sensitivity.

    Raises:
        PrivacyError: ``bound`` is not a finite number > 0, or ``update`` is not finite.
    """
    return _clip(update, bound, 1)
