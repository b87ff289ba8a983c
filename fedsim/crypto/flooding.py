"""How much noise floods a decryption share: the high-probability bound it is sized from.

OpenFHE documents the flooding of a share as ``sigma = sqrt(12 tau) 2^(s/2) B`` with
``B`` a bound of the decrypted computation's noise, ``tau`` the decryptions the key will
serve and ``s`` the statistical security. OpenFHE's estimation pass measures a standard
deviation (``GetLogError``), not a bound: over the ``ring_dim`` coefficients of ``tau``
decryptions the largest is several standard deviations out (FLOODING.md measures it),
so fedsim takes ``B`` as that many standard deviations (`tail_bits`), plus a margin.
"""

from __future__ import annotations

import math

OPENFHE_STATISTICAL_SECURITY = 30  # bits this build's flooding formula fixes for CKKS
ESTIMATE_MARGIN_BITS = 0.5  # added to the measured noise estimate (its std: 0.02-0.06 bits)

__all__ = ["ESTIMATE_MARGIN_BITS", "OPENFHE_STATISTICAL_SECURITY", "bound_bits",
           "flooding_sigma", "tail_bits"]


def tail_bits(ring_dim: int, decryptions: int, statistical_security: int) -> float:
    """log2 of how many standard deviations bound EVERY coefficient of every decryption.

    A Gaussian coefficient exceeds ``k`` standard deviations with probability at most
    ``2 exp(-k^2 / 2)``; over ``ring_dim * decryptions`` coefficients (a union bound) that
    is at most ``2^-s`` for ``k^2 = 2 ln(2 ring_dim decryptions) + 2 s ln 2``.
    """
    k2 = 2 * math.log(2 * ring_dim * decryptions) + 2 * statistical_security * math.log(2)
    return 0.5 * math.log2(k2)


def bound_bits(measured: float, ring_dim: int, decryptions: int,
               statistical_security: int) -> float:
    """log2 of the high-probability bound the flooding is sized from (margin included)."""
    return measured + ESTIMATE_MARGIN_BITS + tail_bits(ring_dim, decryptions,
                                                       statistical_security)


def flooding_sigma(bound: float, decryptions: int, statistical_security: int) -> float:
    """OpenFHE's documented flooding: ``sqrt(12 tau) 2^(s/2) B`` for a noise bound ``B``."""
    return math.sqrt(12 * decryptions) * 2 ** (statistical_security / 2) * 2**bound
