"""The Gaussian mechanism: L2 clipping, discrete Gaussian noise of scale ``C z`` on a
lattice (Canonne, Kamath and Steinke 2020; Dwork and Roth 2014 for the continuous one).

Accounting: dp-accounting's ``GaussianDpEvent(z)``. The discrete Gaussian at integer
sensitivity satisfies the same concentrated DP, ``Delta^2 / (2 sigma^2)``, as the
continuous one (CKS 2020, Thm. 4), hence the same RDP curve. Under Poisson sampling
dp-accounting integrates the continuous mixture; for the discrete one the same sums
run over the lattice, and by Poisson summation each differs from its integral by a
relative ``2 sum_j exp(-2 pi^2 j^2 (sigma/gamma)^2)``, below ``10^-130`` at the at least
4 lattice steps per sigma that `lattice_scale` requires (and ``10^-800`` at 10), so the
reported epsilon holds to that precision. This covers the RDP accountant's sums; PLD
integrates the hockey-stick divergence, whose integrand is not smooth at its kink: the
same argument is expected to hold there but is not written out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, final

import dp_accounting
import numpy as np

from fedsim.privacy.mechanisms.base import Mechanism, Norm, check_shares, check_size
from fedsim.privacy.mechanisms.discrete import discrete_gaussian, sum_divergence
from fedsim.privacy.mechanisms.registry import register_mechanism


@register_mechanism
@final
@dataclass(frozen=True)
class GaussianMechanism(Mechanism):
    """Discrete Gaussian noise of scale ``clip * noise_multiplier`` on an L2-clipped sum.

    Shares: ``N_Z(0, sigma^2 / m)`` each (in lattice steps); ``m`` of them sum to within
    `share_divergence` of ``N_Z(0, sigma^2)`` (Kairouz, Liu and Steinke 2021).
    Tail: ``P(|N(0, 1)| > 8) < 1.3e-15`` per value.
    """

    name: ClassVar[str] = "gaussian"
    norm: ClassVar[Norm] = "l2"
    tail: ClassVar[float] = 8.0
    clip: float
    noise_multiplier: float

    @property
    def stddev(self) -> float:
        return self.scale

    def sample(self, rng: Any, size: int) -> np.ndarray:
        return self.share(rng, size, 1)

    def share(self, rng: Any, size: int, num_shares: int) -> np.ndarray:
        m = check_shares(num_shares)
        gamma, steps = self.lattice_scale(check_size(size), m)
        return gamma * discrete_gaussian(rng, steps, size).astype(np.float64)

    def share_divergence(self, size: int, num_shares: int) -> float:
        """``tau`` of ``num_shares`` shares summed (0.0 to float precision in practice)."""
        _, steps = self.lattice_scale(check_size(size), check_shares(num_shares))
        return sum_divergence(steps, num_shares)

    @classmethod
    def dp_event(cls, noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.GaussianDpEvent(noise_multiplier)
